"""The memory tier's budget: what an entry costs, so the tier stays inside its bytes."""

from __future__ import annotations

from livecdn.cache.freshness import Lifetime
from livecdn.cache.memory import ENTRY_OVERHEAD, MemoryStore
from livecdn.cache.stored import Stored
from livecdn.media.kinds import NameKind
from livecdn.media.playlist import read

KEY = "/live/cam/index.m3u8"
BODY = b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n" + b"".join(b"#EXTINF:4.0,\nseg%d.ts\n" % n for n in range(50))
LIFETIME = Lifetime(2.0, 2.0, 30.0)


def playlist(with_manifest: bool) -> Stored:
    return Stored(KEY, 200, (), BODY, 0.0, LIFETIME, NameKind.PLAYLIST, read(KEY, BODY) if with_manifest else None)


def test_a_playlists_announced_names_count_against_the_budget() -> None:
    budget = len(BODY) + len(KEY) + ENTRY_OVERHEAD  # exactly one playlist's body and entry, nothing more
    memory = MemoryStore(budget, max_entry=budget * 10)
    assert memory.put(playlist(with_manifest=False)) and memory.get(KEY) is not None
    memory.put(playlist(with_manifest=True))  # admitted, then evicted: its 50 names do not fit
    assert memory.get(KEY) is None and memory.used == 0 and len(memory) == 0


def test_what_an_entry_cost_is_given_back_when_it_goes() -> None:
    memory = MemoryStore(1 << 20)
    memory.put(playlist(with_manifest=True))
    assert memory.used > len(BODY) + ENTRY_OVERHEAD
    memory.put(playlist(with_manifest=False))  # replaces it under the same key
    assert memory.used == len(BODY) + len(KEY) + ENTRY_OVERHEAD
    memory.remove(KEY)
    assert memory.used == 0


def test_a_drop_removes_what_it_matches_and_gives_its_bytes_back() -> None:
    store = MemoryStore(1 << 20)
    for key in ("/a/1.ts", "/a/2.ts", "/b/1.ts"):
        store.put(Stored(key, 200, (), b"z" * 10, 0.0, Lifetime(1.0, 0.0, 0.0), NameKind.MEDIA))
    kept = store.get("/b/1.ts")
    assert kept is not None
    assert store.drop(lambda k: k.startswith("/a/")) == 2
    assert (len(store), store.get("/a/1.ts"), store.used) == (1, None, len(kept.body) + len(kept.key) + ENTRY_OVERHEAD)
