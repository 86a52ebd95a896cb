"""Reference scanning: which of a set of needles occur in a byte stream.

Nix decides the references of a build output by scanning the output's NAR
serialisation for the nixbase32 hash parts (32 characters) of candidate
store paths.  :class:`RefScanner` does the same over a stream of chunks,
finding needles that straddle chunk boundaries (it keeps the last
``max_len - 1`` bytes of the previous chunk).  :func:`scan_path` and
:func:`scan_node` scan the NAR of a path or abstract tree, exactly like Nix
2.8's ``scanForReferences`` (so names, symlink targets and contents all count).

Approach.  When every needle consists only of nixbase32 characters and is at
least :data:`MIN_FAST_LEN` long (the normal case), the scanner looks, like
Nix's ``RefScanSink``, only at *runs* of nixbase32 characters long enough to
hold a needle: ``bytes.translate`` maps the chunk to a 0/1 mask at C speed,
``find`` locates runs of ones of the shortest needle length, and within a run
every window is checked by set membership (or, for runs much longer than the
number of needles, each needle by ``in``).  Typical data (binaries, text with
``e``, ``o``, ``t``, ``u``) has few such runs, so most bytes are touched only
by ``translate`` and ``find``.  Other needles fall back to one ``in`` per
not-yet-found needle per chunk.  Needles already found are not searched again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from nixcompat.nar.dump import write_node, write_path
from nixcompat.nar.model import NarNode
from nixcompat.nar.writer import NarWriter

#: The nixbase32 alphabet (no ``e``, ``o``, ``t``, ``u``).
NIXBASE32_ALPHABET = b"0123456789abcdfghijklmnpqrsvwxyz"
#: Shortest needle length for which the run-based scan is used.
MIN_FAST_LEN = 8

_MASK = bytes(1 if i in NIXBASE32_ALPHABET else 0 for i in range(256))
_CHUNK = 1 << 20


class RefScanner:
    """Finds which of ``needles`` (bytes, or ``str`` encoded as UTF-8) occur in fed data.

    ``found`` is the set of indexes into ``needles`` seen so far; equal
    needles share their fate (all their indexes are found together).
    """

    def __init__(self, needles: Sequence[bytes | str]) -> None:
        encoded = [n.encode() if isinstance(n, str) else bytes(n) for n in needles]
        lengths = set(map(len, encoded))
        if 0 in lengths:
            raise ValueError(f"needle {[len(n) for n in encoded].index(0)} is empty")
        self._indexes: dict[bytes, list[int]] = {}
        if len(set(encoded)) == len(encoded):  # the usual case: all distinct
            self._indexes = {needle: [i] for i, needle in enumerate(encoded)}
        else:
            for i, needle in enumerate(encoded):
                self._indexes.setdefault(needle, []).append(i)
        self._pending: set[bytes] = set(self._indexes)
        self._lengths = sorted(lengths)
        self._keep = max(self._lengths, default=1) - 1
        # every needle long enough and of nixbase32 characters only: one translate for all
        self._fast = (
            bool(encoded)
            and self._lengths[0] >= MIN_FAST_LEN
            and not (b"".join(encoded).translate(None, NIXBASE32_ALPHABET))
        )
        self._tail = b""
        self.found: set[int] = set()

    def __repr__(self) -> str:
        return f"RefScanner({len(self._indexes)} needles, {len(self.found)} found)"

    @property
    def done(self) -> bool:
        """Whether every needle has been found (further data changes nothing)."""
        return not self._pending

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Scan the next chunk of the stream."""
        if not self._pending or not len(chunk):
            return
        data = self._tail + chunk if self._tail else bytes(chunk)
        if self._fast:
            self._scan_runs(data)
        else:
            for needle in [n for n in self._pending if n in data]:
                self._hit(needle)
        self._tail = data[-self._keep :] if self._keep else b""

    def _hit(self, needle: bytes) -> None:
        self._pending.discard(needle)
        self.found.update(self._indexes[needle])

    def _scan_runs(self, data: bytes) -> None:
        mask = data.translate(_MASK)
        shortest = self._lengths[0]
        ones = b"\1" * shortest
        start = mask.find(ones)
        while start != -1 and self._pending:
            end = mask.find(b"\0", start + shortest)
            if end == -1:
                end = len(data)
            self._scan_run(data[start:end])
            start = mask.find(ones, end)

    def _scan_run(self, run: bytes) -> None:
        pending = self._pending
        for length in self._lengths:
            windows = len(run) - length + 1
            if windows <= 0:
                break
            if windows > 4 * len(pending):
                hits = [n for n in pending if len(n) == length and n in run]
            else:
                hits = [w for w in (run[i : i + length] for i in range(windows)) if w in pending]
            for needle in hits:
                if needle in pending:
                    self._hit(needle)


def scan_chunks(chunks: Iterable[bytes], needles: Sequence[bytes | str]) -> set[int]:
    """Indexes of the ``needles`` occurring in the concatenation of ``chunks``."""
    scanner = RefScanner(needles)
    for chunk in chunks:
        scanner.feed(chunk)
        if scanner.done:
            break
    return scanner.found


def scan_path(path: str | os.PathLike[str] | bytes, needles: Sequence[bytes | str]) -> set[int]:
    """Indexes of the ``needles`` in the NAR of ``path`` (Nix's ``scanForReferences``)."""
    scanner = RefScanner(needles)
    write_path(path, NarWriter(scanner.feed), buffer=bytearray(_CHUNK), chunk_size=_CHUNK)
    return scanner.found


def scan_node(node: NarNode, needles: Sequence[bytes | str]) -> set[int]:
    """Indexes of the ``needles`` in the NAR of the abstract tree ``node``."""
    scanner = RefScanner(needles)
    write_node(node, NarWriter(scanner.feed))
    return scanner.found
