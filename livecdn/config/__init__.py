"""The topology file: one TOML document describing the whole deployment.

`schema` holds the values (imported by every room), `load` reads them from a
file (imported by the CLI). A bad value raises `ConfigError` naming the file,
the key and the problem; the CLI turns that into one line and exit status 2.
"""

from livecdn.config.load import load, parse_size
from livecdn.config.schema import (
    Address,
    CacheSettings,
    CdnSettings,
    ConfigError,
    EdgeConfig,
    GuardSettings,
    HealthSettings,
    LimitSettings,
    OriginConfig,
    PathRule,
    Region,
    Rendition,
    RouterConfig,
    ShieldConfig,
    SigningKey,
    SigningSettings,
    Topology,
)

__all__ = [
    "Address", "CacheSettings", "CdnSettings", "ConfigError", "EdgeConfig", "GuardSettings", "HealthSettings",
    "LimitSettings", "OriginConfig", "PathRule", "Region", "Rendition", "RouterConfig", "ShieldConfig", "SigningKey",
    "SigningSettings", "Topology",
    "load", "parse_size",
]
