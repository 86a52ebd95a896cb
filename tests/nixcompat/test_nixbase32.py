"""nixbase32 against the vectors, a bit-by-bit reference and hypothesis."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcompat.errors import NixCompatError
from nixcompat.nixbase32 import ALPHABET, Nixbase32Error, decode, decoded_len, encode, encoded_len
from tests.vectors import entries, entry_id, load

VALID = entries("nixbase32", valid=True)
INVALID = entries("nixbase32", valid=False)


def reference_encode(data: bytes) -> str:
    """Nix's printHash32 loop, transcribed literally (slow, obviously correct)."""
    out = []
    for n in range(encoded_len(len(data)) - 1, -1, -1):
        b = n * 5
        i, j = divmod(b, 8)
        c = data[i] >> j
        if i + 1 < len(data):
            c |= data[i + 1] << (8 - j)
        out.append(ALPHABET[c & 0x1F])
    return "".join(out)


def test_alphabet_matches_vectors() -> None:
    assert load("nixbase32")["alphabet"] == ALPHABET
    assert len(set(ALPHABET)) == 32
    assert not set("eotu") & set(ALPHABET)


@pytest.mark.parametrize("entry", VALID, ids=[entry_id(e) for e in VALID])
def test_valid_vector(entry: dict[str, Any]) -> None:
    data = bytes.fromhex(entry["hex"])
    assert encode(data) == entry["nixbase32"]
    assert decode(entry["nixbase32"]) == data
    assert decode(entry["nixbase32"].encode()) == data
    assert len(entry["nixbase32"]) == encoded_len(len(data))
    assert decoded_len(len(entry["nixbase32"])) == len(data)


@pytest.mark.parametrize("entry", INVALID, ids=[entry_id(e) for e in INVALID])
def test_invalid_vector(entry: dict[str, Any]) -> None:
    with pytest.raises(Nixbase32Error, match="invalid nixbase32") as info:
        decode(entry["nixbase32"])
    assert repr(entry["nixbase32"]) in str(info.value)
    assert isinstance(info.value, NixCompatError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0", "length 1"),
        ("0" * 51 + "e", "character 'e'"),
        ("z" + "0" * 51, "non-zero trailing bits"),
        (" " + "0" * 51, "character ' '"),
        ("0_" + "0" * 50, "character '_'"),  # int(..., 32) would accept underscores
        ("+" + "0" * 51, "character '+'"),
    ],
)
def test_error_names_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(Nixbase32Error, match=re.escape(fragment)):
        decode(text)


def test_non_ascii_bytes_are_rejected() -> None:
    with pytest.raises(Nixbase32Error, match="non-ASCII"):
        decode(b"\xff" * 32)
    with pytest.raises(Nixbase32Error, match="character"):
        decode("ä" * 32)


def test_lengths() -> None:
    assert [encoded_len(n) for n in (0, 1, 16, 20, 32, 64)] == [0, 2, 26, 32, 52, 103]
    for n in range(200):
        assert decoded_len(encoded_len(n)) == n


def test_bit_order_is_reversed() -> None:
    # the last byte decides the first characters
    assert encode(b"\x1f") == "0z"
    assert encode(b"\x00" * 19 + b"\xff")[0:2] == "zw"


@given(st.binary(max_size=100))
@settings(max_examples=300)
def test_round_trip_and_reference(data: bytes) -> None:
    text = encode(data)
    assert text == reference_encode(data)
    assert decode(text) == data
    assert decode(text.encode("ascii")) == data


@given(st.text(alphabet=ALPHABET + "eotuA_ -", max_size=60))
@settings(max_examples=300)
def test_decode_accepts_exactly_canonical_strings(text: str) -> None:
    try:
        data = decode(text)
    except Nixbase32Error:
        n = decoded_len(len(text))
        canonical = encoded_len(n) == len(text) and all(c in ALPHABET for c in text)
        if canonical:  # then only the leftover bits can be the reason
            value = 0
            for c in text:
                value = value * 32 + ALPHABET.index(c)
            assert value >> (8 * n) != 0
    else:
        assert encode(data) == text
