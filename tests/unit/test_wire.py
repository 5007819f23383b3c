"""Wire codecs: round trips, incremental checksums, and rejection of every malformed input."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dysco.core import control as ctl
from dysco.core import synlist
from dysco.core.errors import RemoteError
from dysco.core.packet import (
    ACK,
    FIN,
    OPT_MSS,
    OPT_TS,
    PSH,
    SYN,
    TcpPacket,
    build,
    sack_option,
    verify_checksums,
)

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)
addr = st.integers(1, 2**32 - 1)
tuples = st.tuples(addr, addr, u16, u16)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    nblocks = draw(st.integers(0, 3))
    blocks = [(draw(u32), draw(u32)) for _ in range(nblocks)]
    opts = sack_option(blocks) if blocks else b""
    if draw(st.booleans()):
        opts += struct.pack("!BBH", OPT_MSS, 4, draw(u16))
    return build(
        draw(addr), draw(addr), draw(u16), draw(u16), draw(u32), draw(u32),
        draw(st.sampled_from([ACK, ACK | PSH, SYN, SYN | ACK, ACK | FIN])),
        window=draw(u16), options=opts, payload=draw(st.binary(max_size=64)),
    )


@settings(max_examples=300)
@given(packets(), tuples, u32, u32, st.lists(st.tuples(u32, u32), max_size=3))
def test_incremental_rewrite_keeps_checksums_valid(
    data: bytes, t: tuple[int, int, int, int], s: int, a: int, blocks: list[tuple[int, int]]
) -> None:
    pkt = TcpPacket.parse(data)
    pkt.set_tuple(t)
    pkt.set_seq(s)
    pkt.set_ack(a)
    if pkt.sack_blocks():
        pkt.set_sack_blocks(blocks[: len(pkt.sack_blocks())])
    assert verify_checksums(pkt.buf)
    again = TcpPacket.parse(pkt.to_bytes())
    assert again.tuple4() == t and again.seq == s and again.ack == a


@settings(max_examples=200)
@given(packets(), u32)
def test_tag_option_round_trip(data: bytes, tag: int) -> None:
    pkt = TcpPacket.parse(data)
    tagged = pkt.with_tag(tag)
    assert tagged.tag() == tag and verify_checksums(tagged.buf)
    plain = tagged.without_tag()
    assert plain.tag() is None and plain.payload == pkt.payload and verify_checksums(plain.buf)
    assert plain.sack_blocks() == pkt.sack_blocks()


@given(packets())
def test_every_truncation_is_rejected_with_a_typed_error(data: bytes) -> None:
    for n in range(len(data)):
        with pytest.raises(RemoteError):
            TcpPacket.parse(data[:n])  # the IP header still claims the full length


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_parse_never_raises_anything_else(data: bytes) -> None:
    with contextlib.suppress(RemoteError):
        TcpPacket.parse(data)


@given(tuples, st.lists(addr, min_size=1, max_size=16), u32)
def test_synlist_round_trip(t: tuple[int, int, int, int], hops: list[int], rev: int) -> None:
    sl = synlist.SynList(t, tuple(hops), rev)
    assert synlist.decode(sl.encode()) == sl


@settings(max_examples=300)
@given(st.binary(max_size=100))
def test_synlist_garbage_rejected(data: bytes) -> None:
    with contextlib.suppress(RemoteError):
        synlist.decode(data)


messages = st.builds(
    ctl.Control,
    type=st.sampled_from(list(ctl.MsgType)), rid=st.integers(0, 2**64 - 1), sub=tuples,
    la=addr, ra=addr, value=u32, reason=st.sampled_from(list(ctl.NackReason)),
    session=tuples, hops=st.lists(addr, max_size=16).map(tuple),
)


@given(messages)
def test_control_round_trip_and_truncations(msg: ctl.Control) -> None:
    data = msg.encode()
    got = ctl.decode(data)
    if msg.type in (ctl.MsgType.SYN, ctl.MsgType.RIGHT_REQUEST):
        assert got == msg
    else:
        assert (got.type, got.rid, got.sub, got.la, got.ra, got.value) == (
            msg.type, msg.rid, msg.sub, msg.la, msg.ra, msg.value)
    for n in range(len(data)):
        with pytest.raises(RemoteError):
            ctl.decode(data[:n])
    with pytest.raises(RemoteError):
        ctl.decode(data + b"\x00")


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_control_garbage_rejected(data: bytes) -> None:
    with contextlib.suppress(RemoteError):
        ctl.decode(data)


def test_bad_fields_named_in_the_error() -> None:
    good = ctl.Control(ctl.MsgType.ACK, 1, (1, 2, 3, 4), 5, 6, 7).encode()
    with pytest.raises(RemoteError) as e:
        ctl.decode(b"\x00\x00" + good[2:])
    assert e.value.reason == "bad_magic"
    with pytest.raises(RemoteError) as e:
        ctl.decode(good[:3] + b"\x63" + good[4:])
    assert e.value.reason == "bad_type"
    with pytest.raises(RemoteError) as e:
        TcpPacket.parse(b"\x60" + bytes(39))
    assert e.value.reason == "not_ipv4"


@given(u32, u32)
def test_timestamp_option_is_read(tsval: int, tsecr: int) -> None:
    opts = bytes([1, 1, OPT_TS, 10]) + struct.pack("!II", tsval, tsecr)
    pkt = TcpPacket.parse(build(1, 2, 3, 4, 5, 6, ACK, options=opts))
    assert pkt.timestamps() == (tsval, tsecr)
    bad = bytes([1, 1, OPT_TS, 9]) + bytes(8)
    with pytest.raises(RemoteError):
        TcpPacket.parse(build(1, 2, 3, 4, 5, 6, ACK, options=bad))
