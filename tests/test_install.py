"""An installed livecdn, as `pip install` leaves it (issue 14, item 1): the wheel alone runs the demo.

The wheel is built from a copy of the tree and installed into a new virtual
environment outside the repository; the project's dependencies come from the
test environment's own site-packages (a .pth file, written after the install
so pip sees none of them), never from the source tree. Then, from a directory
that is not the repository: `livecdn --version`, `livecdn check` of the demo
topology the wheel carries (and its geo database beside it), and `livecdn demo`
whose play URL plays.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

from tests.cdn import ROOT, run_cdn, topology_toml

SYNTHETIC = {"mode": "synthetic", "target_duration": 1, "window": 4, "segment_bytes": 20_000}
# What a copy of the tree leaves out: environments, caches and builds, none of them the project's.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "node_modules", "build", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".mypy_cache", ".ruff_cache", "results")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "livecdn"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE, symlinks=True)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("livecdn-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home)], check=True, timeout=120)
    python = home / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", "--no-deps",
                    str(wheel)], check=True, capture_output=True, timeout=300, env=clean_env())
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, env=clean_env()).stdout.strip()
    (Path(purelib) / "livecdn-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield home


def clean_env() -> dict[str, str]:
    """The environment without the test run's PYTHONPATH (the tree: its egg-info would pass for an install)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "livecdn"), *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=clean_env())


def test_the_wheel_carries_the_license_and_requires_only_what_is_used(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = Parser().parsestr(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
        licenses = [n for n in names if n.endswith("/LICENSE")]
        assert licenses and b"MIT License" in z.read(licenses[0])
    assert meta["License"] == "MIT" or "MIT" in (meta.get("License-Expression") or "")
    assert {"livecdn/demo.toml", "livecdn/demo-geo.mmdb"} <= set(names)
    required = {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in meta.get_all("Requires-Dist")
                if "extra ==" not in r}
    assert "aiocache" not in required


@pytest.mark.slow
def test_an_installed_livecdn_runs_its_demo_from_anywhere(venv: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    version = run(venv, "--version", cwd=elsewhere)
    assert version.returncode == 0 and version.stdout.startswith("livecdn "), version.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import livecdn, edge; print(livecdn.__file__); "
                            "print(edge.__file__)"], capture_output=True, text=True, cwd=elsewhere, check=True,
                           env=clean_env())
    assert str(ROOT) not in where.stdout and str(venv) in where.stdout  # the wheel's code, not the tree's
    demo_config = Path(where.stdout.splitlines()[0]).parent / "demo.toml"
    check = run(venv, "check", "--config", str(demo_config), cwd=elsewhere)
    assert check.returncode == 0 and check.stdout.endswith(": ok\n"), check.stderr
    database = Path(check.stdout.split(" database ")[1].split()[0])
    assert database.is_file() and str(venv) in str(database)
    # The demo itself, on free ports (the shipped file's fixed ones may be taken on a shared machine).
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC))
    with run_cdn(config, livecdn=[str(venv / "bin" / "livecdn")], cwd=elsewhere, env=clean_env()) as info:
        status, playlist = fetch(info["play"])
    assert status == 200 and playlist.startswith(b"#EXTM3U")


def fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()
