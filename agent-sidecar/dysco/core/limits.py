"""Rate limiting of control messages, checked before any MAC is computed.

One token bucket per sender address, so a flooding pod slows only its own messages.
The table is bounded: at most `max_senders` buckets; when it is full (a flood from
spoofed addresses), senders without a bucket share one, and full buckets (senders
quiet for a while) are forgotten at most once a second.
"""

from __future__ import annotations

_SHARED = -1


class RateLimiter:
    def __init__(self, rate: float, burst: int, max_senders: int) -> None:
        if rate <= 0 or burst < 1 or max_senders < 1:
            raise ValueError("rate, burst and max_senders must be positive")
        self.rate = rate
        self.burst = float(burst)
        self.max_senders = max_senders
        self._buckets: dict[int, list[float]] = {}  # sender -> [tokens, last refill]
        self._next_prune = 0.0

    def allow(self, sender: int, now: float) -> bool:
        """Take a token for one message from `sender`; False: drop the message."""
        bucket = self._buckets.get(sender)
        if bucket is None:
            if len(self._buckets) >= self.max_senders and now >= self._next_prune:
                self._prune(now)
            if len(self._buckets) < self.max_senders:
                bucket = self._buckets[sender] = [self.burst, now]
            else:
                bucket = self._buckets.setdefault(_SHARED, [self.burst, now])
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _prune(self, now: float) -> None:
        self._next_prune = now + 1.0
        for sender, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self.rate >= self.burst:
                del self._buckets[sender]

    def senders(self) -> int:
        return len(self._buckets)
