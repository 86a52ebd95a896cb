"""NAR writer, reader, restore and hasher: vectors, API contracts and properties.

The differential tests against a real Nix are in ``test_nar_nix.py``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixcompat.errors import NixCompatError
from nixcompat.nar import (
    MAX_NAME_LEN,
    MAX_TARGET_LEN,
    BytesContents,
    NarDirectory,
    NarError,
    NarHasher,
    NarKind,
    NarNode,
    NarRegular,
    NarSymlink,
    NarWriter,
    dump_path,
    nar_bytes,
    nar_chunks,
    nar_from_path,
    nar_hash_node,
    nar_hash_path,
    read_nar,
    read_tree,
    restore_nar,
    write_node,
)
from nixcompat.nar.model import encode_str
from tests.vectors import entries, entry_id

TREES = [e for e in entries("nar") if "tree" in e]
MALFORMED = [e for e in entries("nar") if "tree" not in e]


# ---------------------------------------------------------------- helpers (also used by test_nar_nix)


def tree_from_spec(spec: dict[str, Any]) -> NarNode:
    """The abstract tree of a vectors-style declarative node."""
    if spec["type"] == "regular":
        data = (
            spec["contents"].encode()
            if "contents" in spec
            else base64.b64decode(spec["contents_b64"])
        )
        return NarRegular.from_bytes(data, executable=spec["executable"])
    if spec["type"] == "symlink":
        return NarSymlink(spec["target"].encode())
    return NarDirectory.of({name: tree_from_spec(child) for name, child in spec["entries"].items()})


def materialise(node: NarNode, path: Path | bytes) -> None:
    """Create ``node`` on disk with plain os calls (independent of restore_nar)."""
    p = os.fsencode(path)
    if isinstance(node, NarRegular):
        with open(p, "wb") as f:
            for chunk in node.contents.chunks():
                f.write(chunk)
        os.chmod(p, 0o755 if node.executable else 0o644)
    elif isinstance(node, NarSymlink):
        os.symlink(node.target, p)
    else:
        os.mkdir(p)
        for name, child in node.entries:
            materialise(child, p + b"/" + name)


def _valid_name(name: bytes) -> bool:
    return name not in (b".", b"..") and b"/" not in name and b"\0" not in name


names = st.binary(min_size=1, max_size=12).filter(_valid_name)
regulars = st.builds(
    lambda data, x: NarRegular.from_bytes(data, executable=x), st.binary(max_size=40), st.booleans()
)
symlinks = st.builds(
    NarSymlink, st.binary(min_size=1, max_size=30).filter(lambda t: b"\0" not in t)
)
trees: st.SearchStrategy[NarNode] = st.recursive(
    st.one_of(regulars, symlinks),
    lambda children: st.dictionaries(names, children, max_size=5).map(NarDirectory.of),
    max_leaves=20,
)


# ---------------------------------------------------------------- vectors


@pytest.mark.parametrize("vector", TREES, ids=entry_id)
def test_vector_tree_serialises_like_nix(vector: dict[str, Any]) -> None:
    tree = tree_from_spec(vector["tree"])
    data = nar_bytes(tree)
    if vector["nar_b64"] is not None:
        assert data == base64.b64decode(vector["nar_b64"])
    assert len(data) == vector["nar_size"]
    assert hashlib.sha256(data).hexdigest() == vector["nar_sha256_hex"]
    assert nar_hash_node(tree) == (bytes.fromhex(vector["nar_sha256_hex"]), vector["nar_size"])
    assert read_tree(data) == tree
    assert nar_bytes(read_tree(data)) == data


@pytest.mark.parametrize("vector", TREES, ids=entry_id)
def test_vector_tree_from_disk(vector: dict[str, Any], tmp_path: Path) -> None:
    materialise(tree_from_spec(vector["tree"]), tmp_path / "t")
    data = dump_path(tmp_path / "t")
    assert hashlib.sha256(data).hexdigest() == vector["nar_sha256_hex"]
    assert b"".join(nar_from_path(tmp_path / "t")) == data
    assert nar_hash_path(tmp_path / "t") == (bytes.fromhex(vector["nar_sha256_hex"]), len(data))


@pytest.mark.parametrize("vector", TREES, ids=entry_id)
def test_vector_restore_then_dump(vector: dict[str, Any], tmp_path: Path) -> None:
    data = nar_bytes(tree_from_spec(vector["tree"]))
    restore_nar(io.BytesIO(data), tmp_path / "out")
    assert dump_path(tmp_path / "out") == data


# Each malformed vector, and what our error message must say about it.
EXPECTED_PROBLEM = {
    "invalid-unsorted-entries": "unsorted",
    "invalid-duplicate-entries": "duplicate",
    "invalid-name-with-slash": "contains '/'",
    "invalid-name-dot": r"b'\.' is not allowed",
    "invalid-name-dotdot": r"b'\.\.' is not allowed",
    "invalid-name-empty": "empty directory entry name",
    "invalid-name-nul": "contains NUL",
    "invalid-name-too-long": f"more than {MAX_NAME_LEN}",
    "invalid-bad-magic": "expected magic",
    "invalid-nonzero-padding": "non-zero padding",
    "invalid-truncated": "unexpected end of NAR",
    "invalid-truncated-contents": "unexpected end of NAR while reading regular file contents",
    "invalid-unknown-type": "unknown node type b'fifo'",
    "invalid-executable-nonempty-marker": "executable marker must be followed by an empty string",
    "invalid-missing-contents": "expected 'contents'",
    "invalid-symlink-empty-target": "symlink target is empty",
    "invalid-symlink-nul-target": "contains NUL",
    "invalid-trailing-data": "trailing data",
}


def test_every_malformed_vector_has_an_expectation() -> None:
    assert {v["id"] for v in MALFORMED} == set(EXPECTED_PROBLEM)


@pytest.mark.parametrize("vector", MALFORMED, ids=entry_id)
def test_malformed_vector_rejected(vector: dict[str, Any]) -> None:
    data = base64.b64decode(vector["nar_b64"])
    problem = EXPECTED_PROBLEM[vector["id"]]
    if vector["expected_valid_tvix"] is None:  # complete NAR + trailing bytes
        entries_ = list(read_nar(io.BytesIO(data)))
        assert entries_[0].path == ()
    with pytest.raises(NarError, match=problem) as info:
        read_tree(data)
    assert info.value.offset is not None
    assert 0 <= info.value.offset <= len(data)
    assert f"at byte offset {info.value.offset}" in str(info.value)
    assert isinstance(info.value, NixCompatError)


def test_offsets_point_at_the_problem() -> None:
    data = nar_bytes(NarDirectory.of({"a": NarSymlink(b"x"), "b": NarSymlink(b"y")}))
    name_b = data.index(encode_str(b"b"))
    bad = data[:name_b] + encode_str(b"a") + data[name_b + 16 :]
    with pytest.raises(NarError) as info:
        read_tree(bad)
    assert info.value.offset == name_b


# ---------------------------------------------------------------- the tree model


def test_model_rejects_bad_trees() -> None:
    with pytest.raises(NarError, match="duplicate"):
        NarDirectory(((b"a", NarSymlink(b"x")), (b"a", NarSymlink(b"y"))))
    with pytest.raises(NarError, match="unsorted"):
        NarDirectory(((b"b", NarSymlink(b"x")), (b"a", NarSymlink(b"y"))))
    with pytest.raises(NarError, match="not allowed"):
        NarDirectory(((b"..", NarSymlink(b"x")),))
    with pytest.raises(NarError, match="empty"):
        NarSymlink(b"")
    with pytest.raises(NarError, match=f"more than {MAX_TARGET_LEN}"):
        NarSymlink(b"x" * (MAX_TARGET_LEN + 1))
    with pytest.raises(NarError, match="does not match"):
        NarRegular(False, 3, BytesContents(b"ab"))
    with pytest.raises(NarError, match="out of range"):
        NarRegular(False, -1, BytesContents(b""))


def test_directory_of_sorts_by_bytes_not_str() -> None:
    # U+E000 sorts after a lone surrogate as str, but its UTF-8 (ee 80 80) sorts before b"\xff".
    d = NarDirectory.of(
        {b"\xff": NarSymlink(b"x"), "\ue000": NarSymlink(b"y"), "a": NarSymlink(b"z")}
    )
    assert [name for name, _ in d.entries] == [b"a", "\ue000".encode(), b"\xff"]


class CountingSource:
    """A chunk source that yields a pattern and counts how often it is asked."""

    def __init__(self, size: int, chunk: int) -> None:
        self.size, self.chunk, self.calls = size, chunk, 0

    def chunks(self) -> Any:
        self.calls += 1
        for start in range(0, self.size, self.chunk):
            yield bytes((start + i) % 251 for i in range(min(self.chunk, self.size - start)))


def test_chunk_source_streams_without_holding_contents() -> None:
    source = CountingSource(10_000, 999)
    tree = NarDirectory.of({"f": NarRegular(True, 10_000, source)})
    chunks = list(nar_chunks(tree))
    assert source.calls == 1
    assert max(len(c) for c in chunks) <= 999
    expected = b"".join(CountingSource(10_000, 10_000).chunks())
    assert read_tree(b"".join(chunks)) == NarDirectory.of(
        {"f": NarRegular.from_bytes(expected, executable=True)}
    )


def test_chunk_source_of_wrong_length_is_an_error() -> None:
    with pytest.raises(NarError, match="exceed the declared size 3"):
        nar_bytes(NarRegular(False, 3, CountingSource(4, 4)))
    with pytest.raises(NarError, match="short of the declared size 5"):
        nar_bytes(NarRegular(False, 5, CountingSource(4, 2)))


# ---------------------------------------------------------------- the push-style writer


def test_writer_events_produce_the_same_bytes_as_the_tree() -> None:
    out = bytearray()
    w = NarWriter(out.extend)
    with w.directory():
        with w.entry(b"bin"), w.directory(), w.entry(b"tool"):
            w.begin_regular(True, 5)
            w.write_contents(b"ab")
            w.write_contents(b"")
            w.write_contents(b"cde")
            w.end_regular()
        with w.entry(b"link"):
            w.symlink(b"bin/tool")
    assert w.finish() == len(out)
    tree = NarDirectory.of(
        {
            "bin": NarDirectory.of({"tool": NarRegular.from_bytes(b"abcde", executable=True)}),
            "link": NarSymlink(b"bin/tool"),
        }
    )
    assert bytes(out) == nar_bytes(tree)


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        (lambda w: (w.symlink(b"a"), w.symlink(b"b")), "root node is already written"),
        (lambda w: (w.begin_directory(), w.symlink(b"a")), "call begin_entry first"),
        (
            lambda w: (
                w.begin_directory(),
                w.begin_entry(b"b"),
                w.symlink(b"x"),
                w.end_entry(),
                w.begin_entry(b"a"),
            ),
            "unsorted directory entry name b'a' after b'b'",
        ),
        (
            lambda w: (
                w.begin_directory(),
                w.begin_entry(b"a"),
                w.symlink(b"x"),
                w.end_entry(),
                w.begin_entry(b"a"),
            ),
            "duplicate",
        ),
        (lambda w: (w.begin_directory(), w.begin_entry(b"a"), w.end_entry()), "has no node"),
        (
            lambda w: (w.begin_directory(), w.begin_entry(b"a"), w.end_directory()),
            "close the entry",
        ),
        (lambda w: (w.begin_directory(), w.begin_entry(b"a/b")), "contains '/'"),
        (lambda w: (w.begin_regular(False, 1), w.symlink(b"x")), "still open"),
        (lambda w: (w.begin_regular(False, 1), w.write_contents(b"xy")), "exceed"),
        (lambda w: (w.begin_regular(False, 2), w.write_contents(b"x"), w.end_regular()), "short"),
        (lambda w: w.write_contents(b"x"), "without an open regular file"),
        (lambda w: w.end_directory(), "without an open directory"),
        (lambda w: w.begin_entry(b"a"), "outside of an open directory"),
        (lambda w: w.symlink(b""), "empty"),
        (lambda w: w.begin_directory() or w.finish(), "incomplete"),
        (lambda w: w.finish(), "incomplete"),
    ],
)
def test_writer_rejects_bad_event_sequences(events: Any, problem: str) -> None:
    w = NarWriter(lambda _data: None)
    with pytest.raises(NarError, match=problem):
        events(w)


def test_writer_into_hasher_matches_bytes() -> None:
    tree = NarDirectory.of({"a": NarRegular.from_bytes(b"x" * 100), "b": NarSymlink(b"a")})
    hasher = NarHasher()
    w = NarWriter(hasher.update)
    write_node(tree, w)
    w.finish()
    data = nar_bytes(tree)
    assert (hasher.digest(), hasher.size, hasher.hexdigest()) == (
        hashlib.sha256(data).digest(),
        len(data),
        hashlib.sha256(data).hexdigest(),
    )


def test_deep_trees_do_not_recurse() -> None:
    depth = 1500  # deeper than Python's default recursion limit
    node: NarNode = NarSymlink(b"bottom")
    for _ in range(depth):
        node = NarDirectory(((b"d", node),))
    data = nar_bytes(node)
    assert sum(1 for _ in read_nar(data, max_depth=depth)) == depth + 1
    with pytest.raises(NarError, match=f"nested deeper than {depth - 1}"):
        list(read_nar(data, max_depth=depth - 1))


# ---------------------------------------------------------------- the streaming reader


def test_reader_yields_entries_in_order_with_streamed_contents() -> None:
    big = bytes(range(256)) * 40
    tree = NarDirectory.of(
        {
            "a": NarRegular.from_bytes(big, executable=True),
            "d": NarDirectory.of({"e": NarSymlink(b"../a")}),
            "z": NarRegular.from_bytes(b"zz"),
        }
    )
    seen = []
    for entry in read_nar(io.BytesIO(nar_bytes(tree)), reject_trailing=True):
        seen.append((entry.path, entry.kind, entry.executable, entry.size, entry.target))
        if entry.path == (b"a",):
            assert entry.contents is not None
            assert entry.contents.read(10) == big[:10]
            assert b"".join(entry.contents.chunks(1000)) == big[10:]
            assert entry.contents.read(5) == b""
    assert seen == [
        ((), NarKind.DIRECTORY, False, 0, None),
        ((b"a",), NarKind.REGULAR, True, len(big), None),
        ((b"d",), NarKind.DIRECTORY, False, 0, None),
        ((b"d", b"e"), NarKind.SYMLINK, False, 0, b"../a"),
        ((b"z",), NarKind.REGULAR, False, 2, None),
    ]


def test_unread_contents_are_skipped_and_the_handle_closes() -> None:
    tree = NarDirectory.of(
        {"a": NarRegular.from_bytes(b"hello world"), "b": NarRegular.from_bytes(b"!")}
    )
    it = read_nar(nar_bytes(tree))
    next(it)
    first = next(it)
    assert first.contents is not None
    assert first.contents.read(5) == b"hello"
    second = next(it)
    assert second.path == (b"b",)
    with pytest.raises(RuntimeError, match="advanced"):
        first.contents.read(1)


class TrickleStream:
    """A stream that returns at most 3 bytes per read (like a slow pipe)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, n: int, /) -> bytes:
        return self._data.read(min(n, 3))


@given(trees)
@settings(max_examples=150, deadline=None)
def test_roundtrip_random_trees(tree: NarNode) -> None:
    data = nar_bytes(tree)
    assert read_tree(data) == tree
    assert read_tree(TrickleStream(data)) == tree
    assert nar_hash_node(tree) == (hashlib.sha256(data).digest(), len(data))


@st.composite
def mutated_nars(draw: st.DrawFn) -> bytes:
    data = bytearray(nar_bytes(draw(trees)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            del data[pos:]
    return bytes(data)


@given(mutated_nars())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_nars_raise_only_nar_error_and_accepted_ones_are_canonical(data: bytes) -> None:
    try:
        tree = read_tree(data)
    except NarError:
        return
    # the reader accepts only canonical NARs: what it accepted re-serialises to the same bytes
    assert nar_bytes(tree) == data


def test_length_fields_do_not_drive_allocation() -> None:
    header = encode_str(b"nix-archive-1") + encode_str(b"(") + encode_str(b"type")
    huge = (2**64 - 1).to_bytes(8, "little")
    with pytest.raises(
        NarError, match="node type is 18446744073709551615 bytes long, more than 16"
    ):
        read_tree(header + huge)
    regular = header + encode_str(b"regular") + encode_str(b"contents") + huge + b"abc"
    with pytest.raises(NarError, match="unexpected end of NAR while reading regular file contents"):
        read_tree(regular)


# ---------------------------------------------------------------- restore


def test_restore_modes_and_no_following(tmp_path: Path) -> None:
    tree = NarDirectory.of(
        {
            "bin": NarDirectory.of({"x": NarRegular.from_bytes(b"#!", executable=True)}),
            "f": NarRegular.from_bytes(b"data"),
            "l": NarSymlink(b"/etc/passwd"),
        }
    )
    old = os.umask(0o077)
    try:
        restore_nar(nar_bytes(tree), tmp_path / "out")
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "bin").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "bin" / "x").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "f").stat().st_mode) == 0o644
    assert os.readlink(out / "l") == "/etc/passwd"
    assert (out / "f").read_bytes() == b"data"


def test_restore_refuses_existing_destination(tmp_path: Path) -> None:
    (tmp_path / "victim").write_bytes(b"keep")
    os.symlink(tmp_path / "victim", tmp_path / "dest")
    with pytest.raises(FileExistsError):
        restore_nar(nar_bytes(NarRegular.from_bytes(b"evil")), tmp_path / "dest")
    assert (tmp_path / "victim").read_bytes() == b"keep"


def test_restore_rejects_bad_nar_and_trailing_data(tmp_path: Path) -> None:
    data = nar_bytes(NarRegular.from_bytes(b"x"))
    with pytest.raises(NarError, match="trailing data"):
        restore_nar(data + b"\0", tmp_path / "a")
    restore_nar(data + b"\0", tmp_path / "b", reject_trailing=False)
    assert (tmp_path / "b").read_bytes() == b"x"


def test_restore_deep_tree_keeps_few_descriptors(tmp_path: Path) -> None:
    depth = 300
    node: NarNode = NarRegular.from_bytes(b"leaf")
    for i in range(depth):
        node = NarDirectory.of({"d": node, f"s{i}": NarSymlink(b"d")})
    data = nar_bytes(node)
    restore_nar(data, tmp_path / "deep")
    assert dump_path(tmp_path / "deep") == data
    assert len(os.listdir("/proc/self/fd")) < 100


# ---------------------------------------------------------------- dumping from disk


def test_dump_rejects_unsupported_file_types(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "fifo")
    with pytest.raises(NarError, match=r"fifo.*unsupported file type 'p'"):
        dump_path(tmp_path / "d")
    with pytest.raises(NarError, match="unsupported file type"):
        nar_hash_path(tmp_path / "d")


def test_executable_is_the_owner_execute_bit(tmp_path: Path) -> None:
    for name, mode in [("owner", 0o744), ("group", 0o654), ("other", 0o645), ("none", 0o600)]:
        (tmp_path / name).write_bytes(b"x")
        os.chmod(tmp_path / name, mode)
    got = {n: read_tree(dump_path(tmp_path / n)) for n in ("owner", "group", "other", "none")}
    assert {n: t.executable for n, t in got.items() if isinstance(t, NarRegular)} == {
        "owner": True,
        "group": False,
        "other": False,
        "none": False,
    }


def test_nar_from_path_streams_in_bounded_chunks(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(os.urandom(300_000))
    chunks = list(nar_from_path(tmp_path / "big", chunk_size=65536))
    assert max(len(c) for c in chunks) <= 65536
    assert b"".join(chunks) == dump_path(tmp_path / "big")
    assert nar_hash_path(tmp_path / "big", chunk_size=4096) == nar_hash_node(
        read_tree(b"".join(chunks))
    )
