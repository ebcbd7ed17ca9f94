"""A least-recently-used cache of results, with hit and miss counts."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class LRUCache:
    """At most ``capacity`` entries; a lookup refreshes its entry, an insert evicts the least recently used.

    ``capacity=0`` disables caching (every lookup misses). Not thread-safe:
    the server touches it from its event loop only.

    >>> cache = LRUCache(2)
    >>> cache.put("a", 1); cache.put("b", 2); cache.get("a"); cache.put("c", 3)
    1
    >>> cache.get("b") is None, cache.hits, cache.misses
    (True, 1, 1)
    """

    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be an integer >= 0, got {capacity!r}")
        self.capacity = capacity
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Any:
        """The cached value, or None (a miss)."""
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        return None

    def put(self, key: Hashable, value: Any) -> None:
        """Remember ``value`` (not None) under ``key``."""
        if self.capacity == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> dict:
        """``size``, ``capacity``, ``hits``, ``misses`` and ``hit_rate`` (hits / lookups; 0 before any)."""
        lookups = self.hits + self.misses
        return {"size": len(self), "capacity": self.capacity, "hits": self.hits, "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else 0.0}
