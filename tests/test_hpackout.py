"""Our HPACK encoder for answers (livecdn/front/hpackout.py), decoded by the `hpack` package's Decoder.

Whatever the fields, a peer's decoder must read back exactly what was
encoded, block after block on one connection (the first block empties the
dynamic table; none after it may rely on one). Derandomized, as the other
property tests.
"""

from __future__ import annotations

from hpack import Decoder
from hpack.table import HeaderTable
from hypothesis import given, settings
from hypothesis import strategies as st

from livecdn.front import hpackout

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=500)
_STATIC = HeaderTable.STATIC_TABLE
# Names and values from the static table (whole, by name only) and anything else, long ones included
# (integers past their prefix).
_NAMES = st.one_of(st.sampled_from([n for n, _ in _STATIC]), st.binary(min_size=1, max_size=300))
_VALUES = st.one_of(st.sampled_from([v for _, v in _STATIC]), st.binary(max_size=300))
_FIELDS = st.one_of(st.sampled_from(list(_STATIC)), st.tuples(_NAMES, _VALUES))
_BLOCKS = st.lists(st.lists(_FIELDS, max_size=12), min_size=1, max_size=4)


@PROPERTY
@given(_BLOCKS)
def test_the_hpack_decoder_reads_back_every_block(blocks: list[list[tuple[bytes, bytes]]]) -> None:
    encoder, decoder = hpackout.Encoder(), Decoder()
    for fields in blocks:
        assert decoder.decode(encoder.encode(fields), raw=True) == fields


@PROPERTY
@given(_BLOCKS, st.integers(0, 3))
def test_fields_encoded_ahead_read_back_in_place(blocks: list[list[tuple[bytes, bytes]]], cut: int) -> None:
    """As the HTTP/2 connection sends an answer: a few fields one by one, then a stored object's in one block."""
    encoder, decoder = hpackout.Encoder(), Decoder()
    for fields in blocks:
        sent = [hpackout.field(n, v) for n, v in fields[:cut]] + [hpackout.block(fields[cut:])]
        assert decoder.decode(encoder.join(sent), raw=True) == fields


def test_a_whole_static_field_is_one_byte_and_the_first_block_empties_the_table() -> None:
    encoder = hpackout.Encoder()
    assert encoder.encode([(b":status", b"200")]) == b"\x20\x88"  # table size 0, then index 8
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
