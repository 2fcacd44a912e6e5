"""The memory tier: an LRU of stored answers bounded in bytes, one per process."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from livecdn.cache.stored import Stored

__all__ = ["MemoryStore", "ENTRY_OVERHEAD"]

# What one entry costs besides its body: the Stored object, its header tuples,
# the key and the OrderedDict slot. Counting it keeps a cache of many tiny
# objects (404s, playlists) inside the budget too.
ENTRY_OVERHEAD = 1024
# What one name a stored playlist announces costs besides its characters: the
# str object and its slots in the manifest's tuples. Counting it keeps a cache
# of long playlists inside the budget.
NAME_OVERHEAD = 64


class MemoryStore:
    """Least-recently-used objects, evicted by total bytes rather than by count.

    An object larger than `max_entry` (a quarter of the budget by default) is
    not admitted: one huge body must not flush everything a popular stream needs.
    """

    __slots__ = ("budget", "max_entry", "used", "_items")

    def __init__(self, budget: int, max_entry: int | None = None) -> None:
        if budget < 0:
            raise ValueError(f"memory budget must not be negative, got {budget}")
        self.budget = budget
        self.max_entry = budget // 4 if max_entry is None else max_entry
        self.used = 0
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def resize(self, budget: int) -> None:
        """A new byte budget (a reload): the least recently used go until the rest fits."""
        if budget < 0:
            raise ValueError(f"memory budget must not be negative, got {budget}")
        self.budget, self.max_entry = budget, budget // 4
        self._evict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Stored | None:
        obj = self._items.get(key)
        if obj is not None:
            self._items.move_to_end(key)
        return obj

    def hit(self, key: str, now: float) -> Stored | None:
        """`get()`, if the object is fresh at `now` (`Stored.fresh`): a memory hit in one call."""
        obj = self._items.get(key)
        if obj is None:
            return None
        self._items.move_to_end(key)
        return obj if now < obj.born + obj.lifetime.fresh else None

    def admits(self, obj: Stored) -> bool:
        return _cost(obj) <= self.max_entry

    def put(self, obj: Stored) -> bool:
        """Store `obj`, evicting the least recently used; False when not admitted."""
        self.remove(obj.key)
        if not self.admits(obj):
            return False
        self._items[obj.key] = obj
        self.used += _cost(obj)
        self._evict()
        return True

    def _evict(self) -> None:
        while self.used > self.budget and self._items:
            _, old = self._items.popitem(last=False)
            self.used -= _cost(old)

    def remove(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= _cost(old)

    def drop(self, match: Callable[[str], bool]) -> int:
        """Remove every object whose key `match` accepts (a purge, a stream restart); returns how many.

        A scan of the whole tier: rare operations only, never on the data path.
        """
        doomed = [k for k in self._items if match(k)]
        for k in doomed:
            self.remove(k)
        return len(doomed)


def _cost(obj: Stored) -> int:
    cost = len(obj.body) + len(obj.gzipped or b"") + len(obj.key) + ENTRY_OVERHEAD
    said = obj.manifest.announced if obj.manifest is not None else None
    if said is not None:
        cost += sum(len(name) + NAME_OVERHEAD for name in said.names)
    return cost
