"""Reference scanning: chunk boundaries, NAR-shaped trees, and agreement with a naive search."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcompat.nar import NarDirectory, NarNode, NarRegular, NarSymlink, dump_path
from nixcompat.refscan import NIXBASE32_ALPHABET, RefScanner, scan_chunks, scan_node, scan_path
from tests.nixcompat.test_nar import materialise
from tests.vectors import load

HASH_A = b"0c8b1zryf2xhzxgwrx4cpvfai3xvbwlf"
HASH_B = b"vf9s1dz1a2nbnnilsxnaa3ri1c0m9kwg"
HASH_C = b"11i0w7x0adl6iyydsilpl0nc8v1zc2m4"
NEEDLES = [HASH_A, HASH_B, HASH_C]


def naive(data: bytes, needles: list[bytes]) -> set[int]:
    return {i for i, n in enumerate(needles) if n in data}


def test_alphabet_is_nixbase32() -> None:
    assert NIXBASE32_ALPHABET.decode() == load("nixbase32")["alphabet"]


def test_needle_across_every_split_position() -> None:
    data = b"\x00junk/nix/store/" + HASH_B + b"-hello\x00more" + HASH_C[:31]
    for split in range(len(data) + 1):
        scanner = RefScanner(NEEDLES)
        scanner.feed(data[:split])
        scanner.feed(data[split:])
        assert scanner.found == {1}, split


def test_needle_fed_one_byte_at_a_time_and_in_three_pieces() -> None:
    data = b"x" * 50 + HASH_A + b"y" * 3 + HASH_C
    scanner = RefScanner(NEEDLES)
    for i in range(len(data)):
        scanner.feed(data[i : i + 1])
    assert scanner.found == {0, 2}
    for a in range(0, len(data), 7):
        for b in range(a, len(data), 5):
            assert scan_chunks([data[:a], data[a:b], data[b:]], NEEDLES) == {0, 2}


def test_needles_inside_long_runs_of_nixbase32_characters() -> None:
    # a long run makes the scanner check needles with `in` rather than per window
    run = b"a" * 5000 + HASH_C + b"0" * 5000
    assert scan_chunks([run], NEEDLES) == {2}
    assert scan_chunks([run[:5010], run[5010:]], NEEDLES) == {2}
    short_run = b"zz" + HASH_A + b"zz"
    assert scan_chunks([short_run], NEEDLES) == {0}


def test_str_needles_duplicates_and_found_stays_found() -> None:
    scanner = RefScanner([HASH_A.decode(), HASH_B, HASH_A])
    scanner.feed(b"..." + HASH_A + b"...")
    assert scanner.found == {0, 2}
    assert not scanner.done
    scanner.feed(HASH_B)
    assert scanner.done
    scanner.feed(b"anything")
    assert scanner.found == {0, 1, 2}


def test_empty_needle_rejected() -> None:
    with pytest.raises(ValueError, match="needle 1 is empty"):
        RefScanner([HASH_A, b""])


def test_no_needles_finds_nothing() -> None:
    scanner = RefScanner([])
    scanner.feed(HASH_A)
    assert scanner.found == set()


@pytest.mark.parametrize("where", ["contents", "symlink", "name", "nested-name"])
def test_scan_path_and_node_find_needles_in_every_part_of_a_tree(
    where: str, tmp_path: Path
) -> None:
    hit = b"/nix/store/" + HASH_A + b"-dep"
    leaves: dict[str, NarNode] = {
        "contents": NarRegular.from_bytes(b"prefix" + hit + b"suffix"),
        "symlink": NarSymlink(hit),
        "name": NarDirectory.of({HASH_A + b"-dep": NarRegular.from_bytes(b"")}),
        "nested-name": NarDirectory.of(
            {"d": NarDirectory.of({b"x" + HASH_A: NarSymlink(b"target")})}
        ),
    }
    tree = NarDirectory.of({"a": NarRegular.from_bytes(HASH_B[:20]), "b": leaves[where]})
    assert scan_node(tree, NEEDLES) == {0}
    materialise(tree, tmp_path / "t")
    assert scan_path(tmp_path / "t", NEEDLES) == {0}
    assert naive(dump_path(tmp_path / "t"), NEEDLES) == {0}


def test_scan_path_across_read_chunks(tmp_path: Path) -> None:
    data = bytearray(os.urandom(3 * 2**20))
    at = 2**20 - 10  # straddles the scanner's 1 MiB read boundary
    data[at : at + 32] = HASH_C
    (tmp_path / "f").write_bytes(bytes(data))
    assert scan_path(tmp_path / "f", NEEDLES) == {2}


@given(
    data=st.lists(st.sampled_from(list(b"ab0e\0")), max_size=400).map(bytes),
    needles=st.lists(
        st.lists(st.sampled_from(list(b"ab0")), min_size=8, max_size=10).map(bytes),
        min_size=1,
        max_size=6,
    ),
    cuts=st.lists(st.integers(0, 400), max_size=5),
)
@settings(max_examples=300, deadline=None)
def test_fast_path_agrees_with_naive_search(
    data: bytes, needles: list[bytes], cuts: list[int]
) -> None:
    assert RefScanner(needles)._fast
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert scan_chunks(chunks, needles) == naive(data, needles)


@given(
    data=st.binary(max_size=300),
    needles=st.lists(st.binary(min_size=1, max_size=4), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 300), max_size=5),
)
@settings(max_examples=200, deadline=None)
def test_general_needles_agree_with_naive_search(
    data: bytes, needles: list[bytes], cuts: list[int]
) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert scan_chunks(chunks, needles) == naive(data, needles)


def test_many_needles_in_random_data() -> None:
    rng = random.Random(3)
    needles = [bytes(rng.choices(NIXBASE32_ALPHABET, k=32)) for _ in range(500)]
    data = bytearray(rng.randbytes(200_000))
    planted = {5, 77, 499}
    for i in planted:
        pos = rng.randrange(len(data) - 32)
        data[pos : pos + 32] = needles[i]
    chunks = [bytes(data[i : i + 4096]) for i in range(0, len(data), 4096)]
    assert scan_chunks(chunks, needles) == naive(bytes(data), needles) == planted
