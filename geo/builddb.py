"""Build a City-type MaxMind DB from a readable JSON source, with `mmdb-writer`.

    python -m geo.builddb configs/demo-geo.json configs/demo-geo.mmdb

The source is one object: `database_type`, `description`, and `networks`, a
map from CIDR network to a City-shaped record (`location.latitude`,
`location.longitude`, optionally `city`/`country` names). IPv4 networks are
stored under ::/96, as MaxMind's own City databases do, so one file answers
both families and gdnsd reads it too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["build", "main", "read_source"]


def read_source(path: str | Path) -> dict[str, Any]:
    """The source file, checked: every network has a record with coordinates.

    Raises:
        ValueError: the file is not such a JSON object.
    """
    import ipaddress

    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("networks"), dict):
        raise ValueError(f"{path}: expected an object with a 'networks' map")
    for network, record in data["networks"].items():
        ipaddress.ip_network(network)  # raises ValueError with the bad value
        loc = record.get("location") if isinstance(record, dict) else None
        if not isinstance(loc, dict) or not {"latitude", "longitude"} <= loc.keys():
            raise ValueError(f"{path}: {network}: record needs location.latitude and location.longitude")
    return data


def build(source: str | Path, out: str | Path) -> int:
    """Write the database; returns the number of networks."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    data = read_source(source)
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True,
                        database_type=data.get("database_type", "livecdn-City"),
                        languages=["en"], description=data.get("description", "livecdn geo database"))
    for network, record in data["networks"].items():
        writer.insert_network(IPSet([network]), _doubles(record))
    writer.to_db_file(str(out))
    return len(data["networks"])


def _doubles(value: Any) -> Any:
    """Coordinates as doubles even when the JSON wrote them as integers (`[50, 8]`)."""
    if isinstance(value, dict):
        return {k: (float(v) if k in ("latitude", "longitude") else _doubles(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_doubles(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m geo.builddb SOURCE.json OUT.mmdb", file=sys.stderr)
        return 2
    try:
        n = build(args[0], args[1])
    except (OSError, ValueError) as e:
        print(f"builddb: {e}", file=sys.stderr)
        return 1
    print(f"{args[1]}: {n} networks")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
