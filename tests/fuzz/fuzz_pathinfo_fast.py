"""Fuzz target: ``decode_path_info_fast`` against ``wire.decode_path_info`` on arbitrary bytes.

Both must accept with equal PathInfos or both reject with ``InvalidRequest``
(the fast decoder falls back to betterproto for what it does not read
plainly, so the messages must match too); any other exception, or any
disagreement, is a finding.  Half the inputs (by their first byte) are
spliced into, or flip bytes of, a valid encoding, so that the fields behind
the framing are reached.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.harness import run

if __name__ == "__main__":  # coverage feedback for the decoder only
    import atheris

    instrumented = atheris.instrument_imports(include=["clients.store.wire_fast"])
else:
    instrumented = contextlib.nullcontext()
with instrumented:
    from clients.castore.model import FileNode
    from clients.errors import InvalidRequest
    from clients.store import wire
    from clients.store.model import PathInfo
    from clients.store.wire_fast import decode_path_info_fast
    from nixcompat.hash import HashAlgo, NixHash
    from nixcompat.narinfo import CaMethod, ContentAddress
    from nixcompat.signing import Signature
    from nixcompat.storepath import StorePath


def _seed() -> bytes:
    """A valid encoding with every field set: file node, references, signatures, deriver, CA."""
    path = StorePath(bytes(range(20)), "hello-2.12")
    dep = StorePath(bytes(range(1, 21)), "dep-1.0")
    return wire.encode_path_info(
        PathInfo(
            store_path=path,
            node=FileNode(path.basename.encode(), bytes(range(32)), 42, executable=True),
            references=(dep, path),
            nar_size=1234,
            nar_sha256=bytes(range(32, 64)),
            signatures=(Signature("cache.example.com-1", bytes(64)),),
            deriver=StorePath(bytes(range(2, 22)), "hello-2.12.drv"),
            ca=ContentAddress(CaMethod.recursive, NixHash(HashAlgo.sha256, bytes(32))),
        )
    )


_SEED = _seed()


def _outcome(data: bytes, fast: bool) -> PathInfo | str:
    try:
        return decode_path_info_fast(data) if fast else wire.decode_path_info(data)
    except InvalidRequest as exc:
        return f"InvalidRequest: {exc}"


def test_one_input(data: bytes) -> None:
    mode = data[0] % 4 if data else 3
    if mode == 0 and len(data) > 2:  # splice the bytes into the seed
        at = data[1] * len(_SEED) // 256
        data = _SEED[:at] + data[2:] + _SEED[at + len(data) % 7 :]
    elif mode == 1:  # flip seed bytes: (2-byte position, xor mask) triples
        seed = bytearray(_SEED)
        for index in range(1, len(data) - 2, 3):
            seed[int.from_bytes(data[index : index + 2]) % len(seed)] ^= data[index + 2]
        data = bytes(seed)
    fast = _outcome(data, fast=True)
    slow = _outcome(data, fast=False)
    if fast != slow:
        raise AssertionError(
            f"decoders disagree on {data.hex()}: fast {fast!r}, betterproto {slow!r}"
        )


if __name__ == "__main__":
    run(test_one_input)
