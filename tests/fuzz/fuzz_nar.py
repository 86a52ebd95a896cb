"""Fuzz the NAR reader (and restore-free round trip): only NarError may escape.

Each input is read twice: as a NAR on its own, and as edits (offset, byte
pairs) applied to one of a few valid seed NARs, so the fuzzer reaches deep
into the grammar without having to discover the magic and token framing.
Whatever the reader accepts must re-serialise to exactly the bytes it read
(the reader accepts only canonical NARs); a mismatch is a finding.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.harness import run

if __name__ == "__main__":  # coverage feedback for nixcompat only (cheap to set up)
    import atheris

    instrumented = atheris.instrument_imports(include=["nixcompat"])
else:
    instrumented = contextlib.nullcontext()
with instrumented:
    from nixcompat.errors import NixCompatError
    from nixcompat.nar import NarDirectory, NarRegular, NarSymlink, nar_bytes, read_nar, read_tree

SEEDS = [
    nar_bytes(NarRegular.from_bytes(b"Hello World!")),
    nar_bytes(NarSymlink(b"/nix/store/somewhereelse")),
    nar_bytes(
        NarDirectory.of(
            {
                ".keep": NarRegular.from_bytes(b""),
                "aa": NarSymlink(b"/nix/store/somewhereelse"),
                "keep": NarDirectory.of({".keep": NarRegular.from_bytes(b"", executable=True)}),
                "x": NarRegular.from_bytes(b"0123456789abcdefg", executable=True),
            }
        )
    ),
]


def _check(data: bytes) -> None:
    try:
        tree = read_tree(data)
    except NixCompatError:
        pass
    else:
        if nar_bytes(tree) != data:
            raise AssertionError("reader accepted a non-canonical NAR")
    try:  # the streaming API with partially read contents
        for entry in read_nar(data, reject_trailing=True):
            if entry.contents is not None:
                entry.contents.read(3)
    except NixCompatError:
        pass


def test_one_input(data: bytes) -> None:
    _check(data)
    if len(data) >= 1:
        seed = bytearray(SEEDS[data[0] % len(SEEDS)])
        edits = data[1:]
        for i in range(0, len(edits) - 2, 3):
            pos = int.from_bytes(edits[i : i + 2], "little")
            if pos < len(seed):
                seed[pos] = edits[i + 2]
            elif edits[i + 2] & 1:
                del seed[pos % len(seed) :]
            if not seed:
                break
        _check(bytes(seed))


if __name__ == "__main__":
    run(test_one_input)
