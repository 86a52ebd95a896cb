"""Store path parsing, ordering and construction against the store_paths vectors."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcompat import nixbase32
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.storepath import (
    STORE_DIR,
    InvalidStorePath,
    StorePath,
    hash_placeholder,
    is_absolute_store_path,
    is_valid_name,
    make_fixed_output_path,
    make_output_path,
    make_store_path,
    make_text_path,
    output_path_name,
    split_absolute_path,
)
from tests.vectors import entries, entry_id

TEXT = entries("store_paths", kind="text")
FIXED = entries("store_paths", kind="fixed")
PLACEHOLDERS = entries("store_paths", kind="hash_placeholder")
PARSE = entries("store_paths", kind="parse")
ABSOLUTE = entries("store_paths", kind="absolute_path")
(ORDERING,) = entries("store_paths", kind="ordering")

EXAMPLE = "00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432"


@pytest.mark.parametrize("entry", TEXT, ids=[entry_id(e) for e in TEXT])
def test_text_vector(entry: dict[str, Any]) -> None:
    refs = [StorePath.from_absolute_path(r) for r in entry["references"]]
    path = make_text_path(entry["name"], entry["content"].encode(), refs)
    assert path.absolute == entry["expected_path"]
    # order and duplicates of the references do not matter; strings work too
    assert make_text_path(entry["name"], entry["content"].encode(), refs[::-1] * 2) == path
    assert make_text_path(entry["name"], entry["content"].encode(), entry["references"]) == path


@pytest.mark.parametrize(
    "entry", FIXED, ids=[f"{e['name']}-{e['method']}-{e['algo']}-{i}" for i, e in enumerate(FIXED)]
)
def test_fixed_vector(entry: dict[str, Any]) -> None:
    h = NixHash(HashAlgo(entry["algo"]), bytes.fromhex(entry["digest_hex"]))
    path = make_fixed_output_path(
        entry["name"],
        h,
        recursive=entry["method"] == "recursive",
        references=[StorePath.from_absolute_path(r) for r in entry["references"]],
        self_reference=entry["self_reference"],
    )
    assert str(path) == entry["expected_path"]


def test_fixed_non_source_rejects_references() -> None:
    h = NixHash.compute(HashAlgo.sha1, b"x")
    ref = StorePath.parse_basename(EXAMPLE)
    with pytest.raises(InvalidStorePath, match="cannot have references"):
        make_fixed_output_path("x", h, recursive=True, references=[ref])
    with pytest.raises(InvalidStorePath, match="cannot have references"):
        make_fixed_output_path(
            "x", NixHash.compute(HashAlgo.sha256, b"x"), False, self_reference=True
        )


@pytest.mark.parametrize("entry", PLACEHOLDERS, ids=[e["output_name"] for e in PLACEHOLDERS])
def test_hash_placeholder_vector(entry: dict[str, Any]) -> None:
    assert hash_placeholder(entry["output_name"]) == entry["expected"]


@pytest.mark.parametrize("entry", PARSE, ids=[entry_id(e) for e in PARSE])
def test_parse_vector(entry: dict[str, Any]) -> None:
    basename: str = entry["basename"]
    if entry["valid_tvix"]:
        path = StorePath.parse_basename(basename)
        assert path.basename == basename
        assert path.hash_part == basename[:32]
        assert path.name == basename[33:]
        assert StorePath.from_absolute_path(f"{STORE_DIR}/{basename}") == path
        assert is_absolute_store_path(path.absolute)
        # the hash part computed from the digest agrees with the parsed one
        assert StorePath(path.digest, path.name).basename == basename
    else:
        with pytest.raises(InvalidStorePath) as info:
            StorePath.parse_basename(basename)
        assert repr(basename) in str(info.value)
        assert not is_absolute_store_path(f"{STORE_DIR}/{basename}")
        with pytest.raises(InvalidStorePath):
            StorePath.from_absolute_path(f"{STORE_DIR}/{basename}")


@pytest.mark.parametrize("entry", ABSOLUTE, ids=[entry_id(e) for e in ABSOLUTE])
def test_absolute_path_vector(entry: dict[str, Any]) -> None:
    if entry["valid"]:
        path, rest = split_absolute_path(entry["input"])
        assert path.basename == entry["store_path_basename"]
        assert rest == entry["rest"]
    else:
        with pytest.raises(InvalidStorePath):
            split_absolute_path(entry["input"])


def test_from_absolute_path_takes_no_trailing_components() -> None:
    assert str(StorePath.from_absolute_path(f"/nix/store/{EXAMPLE}")) == f"/nix/store/{EXAMPLE}"
    for bad in (f"/nix/store/{EXAMPLE}/", f"/nix/store/{EXAMPLE}/bin", f"/nix/store//{EXAMPLE}"):
        with pytest.raises(InvalidStorePath):
            StorePath.from_absolute_path(bad)
    with pytest.raises(InvalidStorePath, match="does not start with '/nix/store/'"):
        StorePath.from_absolute_path(f"/nix/stor/{EXAMPLE}")


def test_ordering_vector() -> None:
    paths = [StorePath.from_absolute_path(p) for p in ORDERING["sorted_paths"]]
    assert sorted(reversed(paths)) == paths
    assert sorted(paths, key=lambda p: p.digest[::-1]) == paths  # tvix: reversed digest bytes
    assert paths[0] < paths[1] <= paths[1] < paths[2]
    assert paths[2] > paths[1] >= paths[1]
    assert not paths[1] < paths[1]


def test_same_hash_orders_by_name() -> None:
    a = StorePath.parse_basename(EXAMPLE[:33] + "a")
    b = StorePath.parse_basename(EXAMPLE[:33] + "b")
    assert a < b
    assert sorted([b, a]) == [a, b]


def test_value_semantics() -> None:
    p = StorePath.parse_basename(EXAMPLE)
    q = StorePath(p.digest, p.name)
    assert p == q
    assert hash(p) == hash(q)
    assert len({p, q}) == 1
    assert repr(p) == f"StorePath('/nix/store/{EXAMPLE}')"
    assert not p.is_derivation
    assert StorePath(p.digest, "x.drv").is_derivation


@pytest.mark.parametrize(
    ("digest", "name", "fragment"),
    [
        (b"\0" * 19, "foo", "must be 20 bytes"),
        (b"\0" * 20, "", "the name is empty"),
        (b"\0" * 20, "a" * 212, "212 characters long"),
        (b"\0" * 20, "foo bar", "illegal character ' '"),
        (b"\0" * 20, "foo/bar", "illegal character '/'"),
    ],
)
def test_construction_is_validated(digest: bytes, name: str, fragment: str) -> None:
    with pytest.raises(InvalidStorePath, match=fragment):
        StorePath(digest, name)


def test_make_store_path_fingerprint() -> None:
    inner = hashlib.sha256(b"content").digest()
    fingerprint = f"source:sha256:{inner.hex()}:/nix/store:foo".encode()
    expected = bytearray(20)
    for i, byte in enumerate(hashlib.sha256(fingerprint).digest()):
        expected[i % 20] ^= byte
    assert make_store_path("source", inner, "foo") == StorePath(bytes(expected), "foo")
    with pytest.raises(InvalidStorePath, match="32-byte sha256"):
        make_store_path("source", inner[:20], "foo")
    with pytest.raises(InvalidStorePath, match="illegal character"):
        make_store_path("source", inner, "f o o")


def test_output_paths() -> None:
    modulo = hashlib.sha256(b"x").digest()
    assert output_path_name("hello", "out") == "hello"
    assert output_path_name("hello", "dev") == "hello-dev"
    assert make_output_path("hello", "out", modulo) == make_store_path(
        "output:out", modulo, "hello"
    )
    assert make_output_path("hello", "dev", modulo) == make_store_path(
        "output:dev", modulo, "hello-dev"
    )


_NAME_CHARS = "abcXYZ019+-._?="


@given(st.binary(min_size=20, max_size=20), st.text(alphabet=_NAME_CHARS, min_size=1, max_size=211))
@settings(max_examples=200)
def test_round_trip(digest: bytes, name: str) -> None:
    path = StorePath(digest, name)
    assert path.hash_part == nixbase32.encode(digest)
    assert StorePath.parse_basename(path.basename) == path
    assert StorePath.from_absolute_path(path.absolute) == path
    assert split_absolute_path(path.absolute + "/a/b") == (path, "a/b")
    assert is_valid_name(name)
    assert is_absolute_store_path(str(path))
