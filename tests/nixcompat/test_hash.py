"""NixHash parsing and printing against the nixhash vectors (and Nix for compress_hash)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcompat.errors import NixCompatError
from nixcompat.hash import HashAlgo, InvalidHash, NixHash, compress_hash
from tests.vectors import entries, entry_id

ENCODE = entries("nixhash", kind="encode")
PARSE = entries("nixhash", kind="parse")


def test_algos() -> None:
    assert [a.value for a in HashAlgo] == ["md5", "sha1", "sha256", "sha512"]
    for algo in HashAlgo:
        assert algo.digest_size == hashlib.new(algo.value).digest_size
        assert HashAlgo.parse(algo.value) is algo
    with pytest.raises(InvalidHash, match="'sha384'"):
        HashAlgo.parse("sha384")


@pytest.mark.parametrize(
    "entry", ENCODE, ids=[f"{e['algo']}-{e['input_utf8'][:20]}" for e in ENCODE]
)
def test_encode_vector(entry: dict[str, Any]) -> None:
    algo = HashAlgo(entry["algo"])
    h = NixHash.compute(algo, entry["input_utf8"].encode())
    assert h.to_hex() == entry["hex"]
    assert h.to_nixbase32() == entry["nixbase32"]
    assert h.to_base64() == entry["base64"]
    assert h.to_sri() == entry["sri"]
    assert h.to_nix_string() == str(h) == f"{algo.value}:{entry['nixbase32']}"
    assert h.to_hex_string() == f"{algo.value}:{entry['hex']}"
    # every printed form parses back, prefixed and (bare) with the algo out of band
    for form in (entry["hex"], entry["nixbase32"], entry["base64"]):
        assert NixHash.parse(f"{algo.value}:{form}") == h
        assert NixHash.parse(form, algo) == h
    assert NixHash.parse(entry["sri"]) == h
    assert NixHash.parse(entry["sri"], algo) == h
    assert NixHash.parse(entry["hex"].upper(), algo) == h  # Nix accepts upper-case hex


@pytest.mark.parametrize("entry", PARSE, ids=[entry_id(e) for e in PARSE])
def test_parse_vector(entry: dict[str, Any]) -> None:
    oob = HashAlgo(entry["out_of_band_algo"]) if "out_of_band_algo" in entry else None
    if entry["valid"]:
        h = NixHash.parse(entry["input"], oob)
        assert h.algo.value == entry["algo"]
        assert h.to_hex() == entry["hex"]
    else:
        with pytest.raises(InvalidHash) as info:
            NixHash.parse(entry["input"], oob)
        assert repr(entry["input"]) in str(info.value)


SHA256 = NixHash.compute(HashAlgo.sha256, b"hello")


@pytest.mark.parametrize(
    ("text", "algo", "fragment"),
    [
        ("sha1:" + SHA256.to_hex(), None, "length 64"),
        ("sha256:" + SHA256.to_hex(), HashAlgo.sha1, "expected a sha1 hash, got sha256"),
        ("sha256:" + SHA256.to_hex()[:-1] + "g", None, "not valid hex"),
        ("sha256:" + SHA256.to_hex()[:-2] + " a", None, "not valid hex"),
        ("sha256:" + SHA256.to_nixbase32()[:-1] + "e", None, "not in the alphabet"),
        ("sha256:" + SHA256.to_base64()[:-1], None, "length 43"),  # prefixed base64 needs padding
        ("sha256:" + SHA256.to_base64()[:-2] + "!=", None, "not valid base64"),
        ("SHA256:" + SHA256.to_hex(), None, "unknown hash algorithm 'SHA256'"),
        ("sha256-" + SHA256.to_base64()[:-4], None, "has 30 bytes"),
        ("sha256-" + SHA256.to_hex(), None, "has 48 bytes"),
        ("", None, "bare digest"),
        ("", HashAlgo.sha256, "length 0"),
        (":" + SHA256.to_hex(), None, "unknown hash algorithm ''"),
    ],
)
def test_parse_errors(text: str, algo: HashAlgo | None, fragment: str) -> None:
    with pytest.raises(InvalidHash) as info:
        NixHash.parse(text, algo)
    assert fragment in str(info.value)
    assert isinstance(info.value, NixCompatError)


def test_sri_padding_is_lenient() -> None:
    b64 = SHA256.to_base64()
    assert b64.endswith("=")
    for padding in ("", "=", "==", "==="):
        assert NixHash.parse("sha256-" + b64.rstrip("=") + padding) == SHA256


def test_digest_length_is_checked() -> None:
    with pytest.raises(InvalidHash, match="32 bytes, not 31"):
        NixHash(HashAlgo.sha256, b"\0" * 31)


def test_compress_hash_is_xor_fold() -> None:
    digest = bytes(range(32))
    folded = compress_hash(digest, 20)
    assert folded[:12] == bytes(i ^ (i + 20) for i in range(12))
    assert folded[12:] == digest[12:20]
    assert compress_hash(digest, 32) == digest
    assert compress_hash(digest, 1) == bytes([0])  # xor of 0..31 is 0
    with pytest.raises(InvalidHash):
        compress_hash(digest, 0)


@given(st.sampled_from(list(HashAlgo)), st.binary(max_size=64))
@settings(max_examples=100)
def test_every_form_round_trips(algo: HashAlgo, data: bytes) -> None:
    h = NixHash.compute(algo, data)
    for text in (h.to_nix_string(), h.to_hex_string(), h.to_sri(), f"{algo.value}:{h.to_base64()}"):
        assert NixHash.parse(text) == h
    assert base64.b64decode(h.to_base64()) == h.digest
