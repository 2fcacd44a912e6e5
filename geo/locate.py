"""Where a player is: its address (or its resolver's ECS subnet) looked up in a City database.

The database is a MaxMind DB of the City kind (`location.latitude` and
`location.longitude` in its records), read with `maxminddb` through mmap.
Addresses it does not know, and records without coordinates, fall back to
the topology's default region. Every answer carries the database network
that matched: its prefix length is the ECS scope of a DNS answer, since the
whole network gets the same location.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import maxminddb

__all__ = ["Location", "Locator", "subnet_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Location:
    """A player's place, and how it was found."""

    latitude: float
    longitude: float
    source: str  # "database" or "default"
    network: str  # the database network that matched (or did not), e.g. "81.2.69.142/31"
    prefix: int  # its prefix length: the ECS scope of an answer for it
    label: str = ""  # city or country, for people reading /route

    @property
    def point(self) -> tuple[float, float]:
        return self.latitude, self.longitude


def subnet_address(family: int, prefix: int, address: bytes) -> IPAddress:
    """The network address an ECS option names (RFC 7871 section 6).

    Raises:
        ValueError: unknown family, prefix too long for it, address bytes not
            ceil(prefix / 8) long, or bits set beyond the prefix.
    """
    size = {1: 4, 2: 16}.get(family)
    if size is None:
        raise ValueError(f"ECS family {family} is neither 1 (IPv4) nor 2 (IPv6)")
    if prefix > size * 8:
        raise ValueError(f"ECS source prefix /{prefix} is too long for the family")
    if len(address) != (prefix + 7) // 8:
        raise ValueError(f"ECS address has {len(address)} bytes for a /{prefix}")
    value = int.from_bytes(address.ljust(size, b"\0"), "big")
    if value & ((1 << (size * 8 - prefix)) - 1):
        raise ValueError("ECS address has bits set beyond its source prefix")
    padded = value.to_bytes(size, "big")
    return ipaddress.IPv4Address(padded) if size == 4 else ipaddress.IPv6Address(padded)


class Locator:
    """Looks addresses up in one City database; falls back to a default location.

    Args:
        path: the .mmdb file.
        default: latitude, longitude for addresses the database cannot place.
        default_name: what to call that place in answers (the region name).

    Raises:
        ValueError: the file is not a MaxMind DB, or not a City-type one.
        OSError: the file cannot be read.
    """

    def __init__(self, path: str, default: tuple[float, float], default_name: str) -> None:
        try:
            self._reader = maxminddb.open_database(path, maxminddb.MODE_MMAP_EXT)
        except maxminddb.InvalidDatabaseError as e:
            raise ValueError(f"not a MaxMind DB: {e}") from None
        kind = self._reader.metadata().database_type
        if "City" not in kind:
            self._reader.close()
            raise ValueError(f"database type {kind!r} has no coordinates: a City database is needed")
        self.path = path
        self.database_type = kind
        self.default = (float(default[0]), float(default[1]))
        self.default_name = default_name

    def locate(self, address: str | IPAddress) -> Location:
        """The location of one address.

        Raises:
            ValueError: `address` is not an IP address.
        """
        record, prefix = self._reader.get_with_prefix_len(address)
        ip = ipaddress.ip_address(address)
        network = f"{ipaddress.ip_network((ip, prefix), strict=False).network_address}/{prefix}"
        found = _coordinates(record)
        if found is None:
            return self.fallback(network, prefix)
        return Location(found[0], found[1], "database", network, prefix, _label(record))

    def fallback(self, network: str = "", prefix: int = 0) -> Location:
        """The default location (for an address the database does not place, or cannot be asked about)."""
        return Location(*self.default, "default", network, prefix, self.default_name)

    def close(self) -> None:
        self._reader.close()


def _coordinates(record: Any) -> tuple[float, float] | None:
    if not isinstance(record, dict):
        return None
    loc = record.get("location")
    if not isinstance(loc, dict):
        return None
    lat, lon = loc.get("latitude"), loc.get("longitude")
    if not isinstance(lat, (int, float)) or not isinstance(lon, (int, float)):
        return None
    return float(lat), float(lon)


def _label(record: Any) -> str:
    for key in ("city", "country", "continent"):
        names = record.get(key, {}).get("names", {})
        if "en" in names:
            return str(names["en"])
    return ""
