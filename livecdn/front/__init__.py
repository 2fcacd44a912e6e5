"""The player-facing HTTP front: each protocol a sans-io connection (`http1`) plus one I/O shell (`listener`),
and a protocol-agnostic front (`answers`) that turns (request, engine answer) into a response plan (`plan`)."""
