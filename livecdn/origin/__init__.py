"""The built-in live HLS origin: a packager stand-in for the demo, tests and load tests.

`synthetic` mode publishes MPEG-TS-shaped segments from a clock (no encoder, cheap);
`ffmpeg` mode encodes a real H.264/AAC test stream that players can play.
"""

from livecdn.origin.node import OriginNode

__all__ = ["OriginNode"]
