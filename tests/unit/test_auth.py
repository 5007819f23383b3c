"""Control-message authentication: forged, replayed, stale, truncated and re-addressed
messages are refused with a reason; key rotation keeps old and new keys valid."""

from __future__ import annotations

import pytest

from dysco.core.auth import Authenticator, AuthError

K1 = {1: b"k" * 32}
K12 = {1: b"k" * 32, 2: b"n" * 32}


def reason(fn: object) -> str:
    with pytest.raises(AuthError) as e:
        fn()  # type: ignore[operator]
    return e.value.reason


def test_round_trip_and_replay() -> None:
    a, b = Authenticator(K1, 1), Authenticator(K1, 1)
    sealed = a.seal(b"hello", 10, 100.0)
    assert b.open(sealed, 10, 100.5) == b"hello"
    assert reason(lambda: b.open(sealed, 10, 100.6)) == "replay"


def test_forgery_truncation_and_wrong_sender() -> None:
    a, b = Authenticator(K1, 1), Authenticator(K1, 1)
    sealed = bytearray(a.seal(b"hello", 10, 100.0))
    assert reason(lambda: b.open(bytes(sealed), 11, 100.0)) == "bad_mac"
    sealed[0] ^= 1
    assert reason(lambda: b.open(bytes(sealed), 10, 100.0)) == "bad_mac"
    assert reason(lambda: b.open(b"short", 10, 100.0)) == "unauthenticated"
    for n in range(len(sealed)):
        with pytest.raises(AuthError):
            b.open(bytes(sealed[:n]), 10, 100.0)


def test_stale_and_future_nonces() -> None:
    a, b = Authenticator(K1, 1, window=30), Authenticator(K1, 1, window=30)
    assert reason(lambda: b.open(a.seal(b"x", 1, 100.0), 1, 200.0)) == "stale"
    assert reason(lambda: b.open(a.seal(b"y", 1, 300.0), 1, 200.0)) == "stale"


def test_rotation_accepts_old_and_new_then_only_new() -> None:
    old, new, mid = Authenticator(K1, 1), Authenticator(K12, 2), Authenticator(K12, 1)
    assert mid.open(old.seal(b"a", 1, 10.0), 1, 10.0) == b"a"
    assert mid.open(new.seal(b"b", 2, 10.0), 2, 10.0) == b"b"
    mid.set_keys({2: K12[2]}, 2)
    assert reason(lambda: mid.open(old.seal(b"c", 1, 11.0), 1, 11.0)) == "unknown_key"


def test_replay_cache_is_bounded() -> None:
    a, b = Authenticator(K1, 1), Authenticator(K1, 1, window=1.0, max_seen=100)
    for i in range(1000):
        t = i * 0.1
        b.open(a.seal(b"m", 1, t), 1, t)
    assert b._seen_count <= 100
