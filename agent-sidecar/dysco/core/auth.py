"""Authenticated control messages: HMAC-SHA256 with a nonce, keyed by a cluster secret.

    control message | key id u8 | nonce u64 | mac (16 bytes of HMAC-SHA256)

The MAC covers the message, the key id, the nonce and the sender's address, so a
message replayed from another address fails. The nonce is the sender's clock in
milliseconds shifted left 16 bits plus a counter: a receiver refuses nonces older or
newer than `window` seconds (stale) and any nonce it has already accepted from that
sender (replay). Two keys may be live at once, so the operator can rotate the secret
without breaking sessions: agents accept old and new while it spreads, then the old one
is dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from .errors import RemoteError

TRAILER = struct.Struct("!BQ16s")
MAC_LEN = 16


class AuthError(RemoteError):
    reason = "bad_mac"


class Authenticator:
    def __init__(self, keys: dict[int, bytes], current: int, window: float = 30.0,
                 max_seen: int = 65536) -> None:
        self.set_keys(keys, current)
        self.window = window
        self.max_seen = max_seen
        self.last_nonce = 0
        self._seen: dict[int, dict[int, float]] = {}  # sender -> nonce -> accepted at
        self._seen_count = 0
        self._next_prune = 0.0

    def set_keys(self, keys: dict[int, bytes], current: int) -> None:
        if current not in keys:
            raise ValueError(f"current key {current} is not among the keys")
        if any(not 0 <= k <= 255 or len(v) < 16 for k, v in keys.items()):
            raise ValueError("key ids are 0..255 and keys at least 16 bytes")
        self.keys = dict(keys)
        self.current = current

    def _mac(self, key: bytes, body: bytes, kid: int, nonce: int, sender: int) -> bytes:
        head = struct.pack("!BQI", kid, nonce, sender)
        return hmac.new(key, head + body, hashlib.sha256).digest()[:MAC_LEN]

    def seal(self, body: bytes, sender: int, now: float) -> bytes:
        nonce = max(self.last_nonce + 1, int(now * 1000) << 16)
        self.last_nonce = nonce
        kid = self.current
        return body + TRAILER.pack(kid, nonce, self._mac(self.keys[kid], body, kid, nonce, sender))

    def open(self, data: bytes, sender: int, now: float) -> bytes:
        """The authenticated message body; raises `AuthError` (nothing is recorded then)."""
        if len(data) < TRAILER.size:
            raise AuthError("control message without authentication trailer", "unauthenticated")
        body = data[: -TRAILER.size]
        kid, nonce, mac = TRAILER.unpack_from(data, len(body))
        key = self.keys.get(kid)
        if key is None:
            raise AuthError(f"unknown key id {kid}", "unknown_key")
        if not hmac.compare_digest(mac, self._mac(key, body, kid, nonce, sender)):
            raise AuthError("MAC does not verify", "bad_mac")
        sent = (nonce >> 16) / 1000.0
        if abs(sent - now) > self.window:
            raise AuthError(f"nonce {sent - now:+.1f}s away from our clock", "stale")
        if nonce in self._seen.get(sender, {}):
            raise AuthError("nonce already accepted", "replay")
        if now >= self._next_prune or self._seen_count >= self.max_seen:
            self._prune(now)
            self._next_prune = now + 1.0
        seen = self._seen.setdefault(sender, {})
        if self._seen_count >= self.max_seen:
            raise AuthError("replay cache full", "overload")
        seen[nonce] = now
        self._seen_count += 1
        return body

    def _prune(self, now: float) -> None:
        """Forget nonces that are stale anyway: memory stays bounded by the window."""
        limit = now - 2 * self.window - 1.0
        for sender in list(self._seen):
            nonces = self._seen[sender]
            old = [n for n, t in nonces.items() if t < limit]
            for n in old:
                del nonces[n]
            self._seen_count -= len(old)
            if not nonces:
                del self._seen[sender]
