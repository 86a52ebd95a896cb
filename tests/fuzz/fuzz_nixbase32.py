"""Fuzz nixbase32 and hash parsing: only NixCompatError may escape.

``decode`` must accept exactly the canonical encodings: whatever it accepts
re-encodes to the same text, and ``encode`` output always decodes back.  The
same input is also fed to ``NixHash.parse`` and the store path parser, which
sit directly on top of nixbase32.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.harness import run

if __name__ == "__main__":  # coverage feedback for nixcompat only
    import atheris

    instrumented = atheris.instrument_imports(include=["nixcompat"])
else:
    instrumented = contextlib.nullcontext()
with instrumented:
    from nixcompat import nixbase32
    from nixcompat.errors import NixCompatError
    from nixcompat.hash import HashAlgo, NixHash
    from nixcompat.storepath import StorePath, is_absolute_store_path


def test_one_input(data: bytes) -> None:
    text = data.decode("latin-1")
    for candidate in (data, text):
        try:
            decoded = nixbase32.decode(candidate)
        except NixCompatError:
            pass
        else:
            if nixbase32.encode(decoded) != text:
                raise AssertionError(f"decode accepted non-canonical {text!r}")
    if nixbase32.decode(nixbase32.encode(data)) != data:
        raise AssertionError(f"round trip failed for {data!r}")

    algo = list(HashAlgo)[data[0] % 4] if data else None
    for oob in (None, algo):
        try:
            h = NixHash.parse(text, oob)
        except NixCompatError:
            pass
        else:
            if NixHash.parse(h.to_nix_string()) != h or NixHash.parse(h.to_sri()) != h:
                raise AssertionError(f"printed forms of {h!r} do not parse back")

    try:
        path = StorePath.from_absolute_path("/nix/store/" + text)
    except NixCompatError:
        if is_absolute_store_path("/nix/store/" + text):
            raise AssertionError(f"{text!r} rejected but matches the store path regex") from None
    else:
        if path.basename != text or not is_absolute_store_path(path.absolute):
            raise AssertionError(f"store path {text!r} does not round trip")


if __name__ == "__main__":
    run(test_one_input)
