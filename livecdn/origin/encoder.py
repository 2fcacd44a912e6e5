"""The ffmpeg mode's encoder: one ffmpeg process per stream, writing HLS into a directory.

One process per stream (not per rendition) so the test picture and tone are generated
once and split: on a small machine, source generation costs as much as encoding.

CPU budget: the origin runs beside a whole CDN and a browser on developer machines
and CI, so renditions are encoded scaled down together until the largest fits
640x360 (`encoded_renditions`); the master playlist advertises what is really encoded.

The process is started in its own process group with a parent-death signal, and
`stop()` terminates then kills the whole group, so no encoder outlives the origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from livecdn.config import Rendition

__all__ = [
    "FFMPEG_MISSING",
    "FRAME_RATE",
    "MAX_HEIGHT",
    "MAX_WIDTH",
    "Encoder",
    "EncoderError",
    "encoded_renditions",
    "ffmpeg_command",
    "find_ffmpeg",
    "frame_rate_for",
    "tone_for",
]

log = logging.getLogger("livecdn.origin")

MAX_WIDTH, MAX_HEIGHT = 640, 360
FRAME_RATE = 25
AUDIO_BITRATE = 64_000
FFMPEG_MISSING = ("origin mode 'ffmpeg' needs the ffmpeg program on PATH: "
                  "install it (apt-get install ffmpeg, or `make test` which does) "
                  "or set mode = \"synthetic\" in the [origin.builtin] table")


class EncoderError(RuntimeError):
    """ffmpeg could not be started, exited early, or never produced a playlist."""


def find_ffmpeg() -> str:
    """Path of ffmpeg; raises EncoderError with what to do when it is missing."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise EncoderError(FFMPEG_MISSING)
    return path


def _even(x: float) -> int:
    # H.264 with 4:2:0 chroma needs even dimensions.
    return max(2, int(round(x / 2)) * 2)


def encoded_renditions(renditions: Sequence[Rendition]) -> tuple[Rendition, ...]:
    """The renditions as ffmpeg mode encodes them: all scaled by one factor so the
    largest fits MAX_WIDTH x MAX_HEIGHT (never scaled up); names and bandwidths kept."""
    factor = min(1.0, MAX_WIDTH / max(r.width for r in renditions),
                 MAX_HEIGHT / max(r.height for r in renditions))
    if factor >= 1.0:
        return tuple(renditions)
    return tuple(dataclasses.replace(r, width=_even(r.width * factor), height=_even(r.height * factor))
                 for r in renditions)


def frame_rate_for(part_target: float | None) -> int:
    """25 fps, or for low latency the first usual rate at which a part is a whole number of frames
    (0.5 s parts: 12.5 frames at 25 fps, 15 at 30), so every part can start with a keyframe."""
    if part_target is None:
        return FRAME_RATE
    whole = (fps for fps in (FRAME_RATE, 30, 24, 50, 60) if abs(part_target * fps - round(part_target * fps)) < 1e-6)
    return next(whole, FRAME_RATE)


def ffmpeg_command(ffmpeg: str, out_dir: Path, renditions: Sequence[Rendition],
                   target_duration: float, window: int, retain: int,
                   tone_hz: int = 440, part_target: float | None = None) -> list[str]:
    """The ffmpeg argv writing `out_dir/<rendition>/index.m3u8` and `seg<N>.ts` for each rendition.

    A keyframe every target duration, so every segment is exactly one target long and
    starts with a keyframe; segments are written as .tmp and renamed when complete, and
    deleted once `retain` segments past the window.

    With `part_target` (low latency), ffmpeg cuts parts instead: a keyframe and a file
    `part<K>.ts` every part target, its playlist listing the parts; the origin groups
    them into segments (`livecdn.origin.sources.FfmpegSource`). Each part is then a
    complete, independently decodable MPEG-TS file made by the encoder itself.
    """
    fps = frame_rate_for(part_target)
    cut = part_target or target_duration
    per = round(target_duration / cut)
    gop = max(1, round(cut * fps))
    width = max(r.width for r in renditions)
    height = max(r.height for r in renditions)
    n = len(renditions)
    split = f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n))
    scales = [f"[s{i}]scale={r.width}:{r.height},setsar=1[v{i}]" for i, r in enumerate(renditions)]
    cmd = [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "warning",
        "-re", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}",
        "-re", "-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=48000",
        "-filter_complex", ";".join([split, *scales]),
    ]
    for i, r in enumerate(renditions):
        video_bps = max(100_000, r.bandwidth - AUDIO_BITRATE)
        cmd += [
            "-map", f"[v{i}]", "-map", "1:a",
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
            "-profile:v", "baseline", "-level:v", "3.1", "-pix_fmt", "yuv420p",
            "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
            "-force_key_frames", f"expr:gte(t,n_forced*{cut:g})",
            "-b:v", str(video_bps), "-maxrate", str(video_bps), "-bufsize", str(2 * video_bps),
            "-threads", "1",
            "-c:a", "aac", "-b:a", str(AUDIO_BITRATE), "-ac", "2",
            "-f", "hls",
            "-hls_time", f"{cut:g}",
            # Low latency: the window's parts and those of the segment being made.
            "-hls_list_size", str((window + 1) * per if part_target else window),
            "-hls_delete_threshold", str(max(1, retain * per)),
            "-hls_flags", "delete_segments+temp_file+independent_segments",
            "-hls_segment_filename", str(out_dir / r.name / ("part%d.ts" if part_target else "seg%d.ts")),
            str(out_dir / r.name / "index.m3u8"),
        ]
    return cmd


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    # PR_SET_PDEATHSIG: the kernel sends SIGKILL to ffmpeg if this process dies without
    # calling stop() (crash, SIGKILL), so no encoder is left orphaned.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


class Encoder:
    """One running ffmpeg for one stream."""

    __slots__ = ("stream", "out_dir", "renditions", "_argv", "_proc", "_log_path", "_log_file")

    def __init__(self, ffmpeg: str, stream: str, out_dir: Path, renditions: Sequence[Rendition],
                 target_duration: float, window: int, retain: int, tone_hz: int = 440,
                 part_target: float | None = None) -> None:
        self.stream = stream
        self.out_dir = out_dir
        self.renditions = tuple(renditions)
        self._argv = ffmpeg_command(ffmpeg, out_dir, self.renditions, target_duration, window,
                                    retain, tone_hz, part_target)
        self._proc: asyncio.subprocess.Process | None = None
        self._log_path = out_dir / "ffmpeg.log"
        self._log_file: BinaryIO | None = None

    def playlist_path(self, rendition: str) -> Path:
        return self.out_dir / rendition / "index.m3u8"

    def log_tail(self, lines: int = 15) -> str:
        """The end of ffmpeg's own log, for error messages."""
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def start(self) -> None:
        """Clear what a previous run left and start ffmpeg."""
        if self._proc is not None:
            raise RuntimeError(f"encoder for {self.stream!r} already started")
        for r in self.renditions:
            d = self.out_dir / r.name
            d.mkdir(parents=True, exist_ok=True)
            # Stale segments from an earlier run would be served as this run's.
            for f in d.iterdir():
                if f.name.startswith(("seg", "part", "index.m3u8")):
                    f.unlink(missing_ok=True)
        self._log_file = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=self._log_file, start_new_session=True, preexec_fn=_die_with_parent)
        log.info("origin encoder started: stream=%s pid=%d dir=%s", self.stream, self._proc.pid,
                 self.out_dir)

    async def wait_ready(self, timeout: float) -> None:
        """Return once every rendition has its first playlist; raise EncoderError if
        ffmpeg exits or `timeout` passes first."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("encoder not started")
        exited = asyncio.ensure_future(proc.wait())
        try:
            async with asyncio.timeout(timeout):
                # A short housekeeping poll: the stdlib has no file-creation event and
                # this runs once, at start.
                while not all(self.playlist_path(r.name).exists() for r in self.renditions):
                    if exited.done():
                        raise EncoderError(
                            f"ffmpeg for stream {self.stream!r} exited with status {proc.returncode} "
                            f"before producing a playlist:\n{self.log_tail()}")
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise EncoderError(f"ffmpeg for stream {self.stream!r} produced no playlist within "
                               f"{timeout:.0f}s:\n{self.log_tail()}") from None
        finally:
            exited.cancel()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def stop(self, timeout: float) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout`; idempotent."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.returncode is None:
                self._signal_group(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), timeout)
                except TimeoutError:
                    log.warning("origin encoder pid=%d ignored SIGTERM for %.1fs; killing",
                                proc.pid, timeout)
                    self._signal_group(proc.pid, signal.SIGKILL)
                    await proc.wait()
            elif proc is not None:
                # Already exited: reap any child it left in its group.
                self._signal_group(proc.pid, signal.SIGKILL)
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def tone_for(index: int) -> int:
    """A distinct test tone per stream, so streams are told apart by ear."""
    return 440 + 110 * (index % 8)
