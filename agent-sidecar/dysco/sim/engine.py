"""A discrete-event loop: callbacks at simulated times, ordered deterministically."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class Engine:
    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.events = 0

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), fn))

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        self.at(self.now + delay, fn)

    def run(self, until: float) -> bool:
        """Run to quiescence; False if events remain at `until` (no quiescence)."""
        while self._queue:
            when, _, fn = self._queue[0]
            if when > until:
                return False
            heapq.heappop(self._queue)
            self.now = when
            self.events += 1
            fn()
        return True
