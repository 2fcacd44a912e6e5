"""Content Steering in the manifests an edge serves: pure text edits, done once per stored copy.

An edge whose topology turns steering on names the router's steering
manifest in every master playlist and MPD it serves, and itself as the
pathway the player starts on:

- HLS (HLS Content Steering specification): `#EXT-X-CONTENT-STEERING` with
  `SERVER-URI` and `PATHWAY-ID`, and `PATHWAY-ID` on every
  `#EXT-X-STREAM-INF` / `#EXT-X-I-FRAME-STREAM-INF`, so the variants form
  this edge's pathway. Variant URIs stay as the origin wrote them (relative
  ones stay relative): the router's `PATHWAY-CLONES` make every other edge a
  pathway by replacing the host of the resolved URIs.
- DASH (DASH-IF content steering): `<ContentSteering>` naming the manifest
  and this edge as `defaultServiceLocation`, and per edge one MPD-level
  `<BaseURL>` (the MPD's directory there) and one `<Location>` (the MPD
  there, for its reloads), their `serviceLocation` the edge's pathway (DASH
  has no clones: every pathway is written out).

A manifest the origin already steers (it has the tag, or MPD-level BaseURLs
of its own) is left exactly as it is: the origin's pathways are not ours to
rename. The fill calls `Steering.dress` once, when the body has arrived whole;
the stored copy (and its gzip copy) carry the result, so no hit rebuilds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from livecdn.media.kinds import ManifestKind
from livecdn.media.names import directory
from livecdn.media.playlist import Manifest

__all__ = ["STEERING_PATH", "Steering", "dress_master", "dress_mpd"]

# Where the router serves steering manifests on its HTTP listener: STEERING_PATH/{hls,dash}/PATHWAY.json.
STEERING_PATH = "/steer"

_STEERING_TAG = b"#EXT-X-CONTENT-STEERING"
# The variant tags a pathway groups (HLS Content Steering spec, "EXT-X-STREAM-INF, EXT-X-I-FRAME-STREAM-INF").
_VARIANT = re.compile(rb"^(#EXT-X-(?:I-FRAME-)?STREAM-INF:)(.*?)(\r?)$", re.MULTILINE)
_HAS_PATHWAY = re.compile(rb"(^|,)PATHWAY-ID=")
_MPD_OPEN = re.compile(rb"<MPD\b[^>]*>", re.DOTALL)
_MPD_BASE_URL = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?BaseURL\b")
_MPD_LOCATION = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?Location\b")
_MPD_STEERING = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?ContentSteering\b")
_FIRST_PERIOD = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?Period\b")


@dataclass(frozen=True, slots=True)
class Steering:
    """What one edge writes into its manifests.

    Args:
        pathway: this edge's Pathway ID (its name).
        server: the router's steering manifest base URL (`.../steer`); HLS asks `/hls/PATHWAY.json`
            under it, DASH `/dash/PATHWAY.json`, so the router knows the base pathway and the format.
        edges: every edge as (pathway, base URL as players reach it), for the MPD's BaseURLs.
    """

    pathway: str
    server: str
    edges: tuple[tuple[str, str], ...]

    def uri(self, kind: str) -> str:
        return f"{self.server}/{kind}/{quote(self.pathway)}.json"

    def dress(self, path: str, body: bytes, manifest: Manifest) -> bytes:
        """The body as this edge serves it: an HLS master or an MPD steered, anything else as it is."""
        if path.lower().endswith(".mpd"):
            return dress_mpd(body, path, self)
        if manifest.info.kind is ManifestKind.MASTER:
            return dress_master(body, self)
        return body


def dress_master(body: bytes, steering: Steering) -> bytes:
    """An HLS master playlist with the steering tag after `#EXTM3U` and this edge's PATHWAY-ID on its variants."""
    if _STEERING_TAG in body:
        return body
    pathway = steering.pathway.encode()

    def variant(m: re.Match[bytes]) -> bytes:
        if _HAS_PATHWAY.search(m.group(2)):
            return m.group(0)
        return m.group(1) + m.group(2) + b',PATHWAY-ID="' + pathway + b'"' + m.group(3)

    body = _VARIANT.sub(variant, body)
    end = body.find(b"\n", max(0, body.find(b"#EXTM3U")))  # `read` has checked the body starts with it
    first = len(body) if end < 0 else end + 1
    newline = b"\r\n" if body[:first].endswith(b"\r\n") else b"\n"
    tag = b'#EXT-X-CONTENT-STEERING:SERVER-URI="' + steering.uri("hls").encode() + b'",PATHWAY-ID="' \
        + pathway + b'"' + newline
    if first == len(body) and not body.endswith(b"\n"):
        body += newline
        first = len(body)
    return body[:first] + tag + body[first:]


def dress_mpd(body: bytes, path: str, steering: Steering) -> bytes:
    """An MPD with a BaseURL and a Location per edge (serviceLocation = pathway) and `<ContentSteering>`.

    ISO/IEC 23009-1 orders the MPD's children BaseURL, Location, ..., ContentSteering, Period.
    """
    if _MPD_STEERING.search(body) or _MPD_BASE_URL.search(body) or _MPD_LOCATION.search(body):
        return body
    open_tag = _MPD_OPEN.search(body)
    period = _FIRST_PERIOD.search(body)
    if open_tag is None or period is None:
        return body
    where = directory(path)
    lines = [f'<BaseURL serviceLocation="{_xml(p)}">{_xml(url + where)}</BaseURL>' for p, url in steering.edges]
    # Where the MPD itself is reloaded from, per pathway too: else a player keeps refreshing it from a dead edge.
    lines += [f'<Location serviceLocation="{_xml(p)}">{_xml(url + path)}</Location>' for p, url in steering.edges]
    lines.append(f'<ContentSteering defaultServiceLocation="{_xml(steering.pathway)}" queryBeforeStart="false">'
                 f"{_xml(steering.uri('dash'))}</ContentSteering>")
    # Just before the first Period: after whatever else the MPD says first (ProgramInformation, Location...).
    at = period.start()
    text = "".join(f"\n  {line}" for line in lines).encode() + b"\n  "
    return body[:at].rstrip(b" \t") + text + body[at:]


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
