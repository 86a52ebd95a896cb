"""Fuzz target: ``NarInfo.parse`` (and the key/signature parsers) on arbitrary bytes.

Only nixcompat's typed errors may escape the parsers.  Whatever parses must
render to text that parses back to the same value.
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
    from nixcompat.errors import NixCompatError
    from nixcompat.narinfo import NarInfo
    from nixcompat.signing import Signature, SigningKey, VerifyingKey

_SEED = (
    b"StorePath: /nix/store/a6k629f66kmpw6j7mw55767w90nc6fps-oracle-selfref\n"
    b"URL: nar/1zw2mjsg074ak70wfcgzcs8l7dl3xk9ijk3c6fssx6ij6fq80ym7.nar.xz\n"
    b"Compression: xz\n"
    b"FileHash: sha256:1zw2mjsg074ak70wfcgzcs8l7dl3xk9ijk3c6fssx6ij6fq80ym7\n"
    b"FileSize: 220\n"
    b"NarHash: sha256:0x856jmmh1k2iz2vyd1cgiw2qmb51r3g8kz64gki57mjj4ynfxf1\n"
    b"NarSize: 232\n"
    b"References: a6k629f66kmpw6j7mw55767w90nc6fps-oracle-selfref\n"
    b"Deriver: wik7cg8kpxms2fs3yk7blysbra6w8890-oracle-selfref.drv\n"
    b"Sig: vector-test-1:Vby8AY1z6Z54e9c7ncJaq0CWU+fYtuHhIKTAWeE5/sK5lCbsjS9smYGW5Q7bN5E14d1eab33p0+SvTk6pWZUAg==\n"
    b"CA: fixed:r:sha256:0hnnpqhd0b48r5gabhblllij4ic2sbwwd1krr56b897nm927g4kg\n"
)


def test_one_input(data: bytes) -> None:
    # Half the inputs splice the fuzzer's bytes into a valid narinfo, so that the
    # value parsers behind the line structure are reached, not just the framing.
    if data[:1] == b"\x00" and len(data) > 2:
        at = data[1] * len(_SEED) // 256
        data = _SEED[:at] + data[2:] + _SEED[at + len(data) % 7 :]
    try:
        info = NarInfo.parse(data)
    except NixCompatError:
        pass
    else:
        assert NarInfo.parse(info.render()) == info
        info.fingerprint()
    for parse in (Signature.parse, VerifyingKey.parse, SigningKey.parse):
        with contextlib.suppress(NixCompatError):
            parse(data)


if __name__ == "__main__":
    run(test_one_input)
