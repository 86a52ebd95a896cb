"""Fuzz the derivation ATerm parser: only NixCompatError may escape.

Each input is parsed twice: on its own, and as edits (offset, bytes) applied
to one of a few valid ``.drv`` seeds, so the fuzzer gets deep into the
grammar quickly.  The parser accepts only canonical ATerms, so whatever it
accepts must re-serialise to exactly the bytes it read; the fast and the
checked parser must agree; and validation, hash modulo and the drv path must
either work or raise a typed error.
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
    from nixcompat import aterm
    from nixcompat.derivation import Derivation, hash_derivation_modulo
    from nixcompat.errors import NixCompatError

SEEDS = [
    b'Derive([("out","/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-bar","r:sha256",'
    b'"08813cbee9903c62be4c5027726a418a300da4500b2d369d3af9286f4815ceba")],[],[],":",":",[],'
    b'[("builder",":"),("name","bar"),("out","/nix/store/4q0pg5zpfmznxscq3avycvf9xdvx50n3-bar"),'
    b'("outputHash","08813cbee9903c62be4c5027726a418a300da4500b2d369d3af9286f4815ceba"),'
    b'("outputHashAlgo","sha256"),("outputHashMode","recursive"),("system",":")])',
    b'Derive([("lib","/nix/store/2vixb94v0hy2xc6p7mbnxxcyc095yyia-has-multi-out-lib","",""),'
    b'("out","/nix/store/55lwldka5nyxa08wnvlizyqw02ihy8ic-has-multi-out","","")],'
    b'[("/nix/store/0hm2f1psjpcwg8fijsmr4wwxrx59s092-bar.drv",["dev","out"])],'
    b'["/nix/store/6sys14dpgfn146n7yynf3zkv842023kr-note.txt"],":","/bin/sh",["-c","a\\"b\\\\"],'
    b'[("builder",":"),("lib","/nix/store/2vixb94v0hy2xc6p7mbnxxcyc095yyia-has-multi-out-lib"),'
    b'("name","has-multi-out"),("out","/nix/store/55lwldka5nyxa08wnvlizyqw02ihy8ic-has-multi-out"),'
    b'("outputs","out lib"),("system",":"),("x","\\n\\t\\r\xc5\xc4\xd6")])',
    b'Derive([("out","","","")],[],[],"s","b",[],[("__json","{\\"name\\":\\"x\\"}"),("out","")])',
]


def _check(data: bytes) -> None:
    fast = aterm._parse_fast(data)
    try:
        raw = aterm._parse_checked(data)
    except NixCompatError:
        if fast is not None:
            raise AssertionError("the fast parser accepted what the checked one rejects") from None
        raw = None
    if raw is not None and fast is not None and fast != raw:
        raise AssertionError("the fast and the checked parser disagree")
    try:
        drv = Derivation.from_aterm(data)
    except NixCompatError:
        return
    if drv.to_aterm() != data:
        raise AssertionError("the parser accepted a non-canonical ATerm")
    with contextlib.suppress(NixCompatError):
        drv.validate()
    with contextlib.suppress(NixCompatError):
        hash_derivation_modulo(drv, lambda _path: b"\x01" * 32, mask_outputs=bool(data[-1] & 1))
    with contextlib.suppress(NixCompatError):
        drv.drv_path()


def _edited(data: bytes) -> bytes:
    """Apply ``data`` as edits to a seed: [seed][offset hi][offset lo][mode][bytes...]."""
    if len(data) < 4:
        return data
    seed = SEEDS[data[0] % len(SEEDS)]
    offset = (data[1] << 8 | data[2]) % (len(seed) + 1)
    payload = data[4:]
    mode = data[3] % 3
    if mode == 0:  # overwrite
        return seed[:offset] + payload + seed[offset + len(payload) :]
    if mode == 1:  # insert
        return seed[:offset] + payload + seed[offset:]
    return seed[:offset] + seed[offset + 1 + len(payload) :]  # delete


def test_one_input(data: bytes) -> None:
    _check(data)
    _check(_edited(data))


if __name__ == "__main__":
    run(test_one_input)
