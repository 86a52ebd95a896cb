"""``Signing(inner, key)``: every path info put gets an ed25519 signature by ``key``.

The signature is over Nix's fingerprint (``PathInfo.fingerprint``:
``1;<path>;sha256:<nixbase32 NAR hash>;<NAR size>;<sorted references>``), so
it is exactly what ``nix store sign --key-file`` adds for the same key, and
Nix accepts it with the matching ``trusted-public-keys`` entry.

Existing signatures are kept, in order; ours is appended unless the very
same signature is already there (ed25519 is deterministic, so signing an
unchanged path info twice adds nothing).

What it deliberately does not do: verify or drop signatures already present
(a signature by another key, or a stale one by this key, passes through
untouched — trust is the reader's decision); sign on ``get`` (path infos
already stored are served as they are); sign path infos that have no
fingerprint (a NAR size of 0 is rejected with ``InvalidRequest``).
``close`` closes ``inner`` (the wrapper owns it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from clients.store.model import PathInfo
from clients.store.protocols import PathInfoService
from nixcompat.signing import SigningKey


class Signing:
    """``PathInfoService`` that signs every path info before putting it into ``inner``."""

    def __init__(self, inner: PathInfoService, key: SigningKey) -> None:
        self._inner = inner
        self._key = key

    def __repr__(self) -> str:
        return f"Signing({self._inner!r}, key={self._key.name!r})"

    async def get(self, digest: bytes) -> PathInfo | None:
        return await self._inner.get(digest)

    async def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        return await self._inner.put(info.signed(self._key))

    async def list(self) -> AsyncIterator[PathInfo]:
        async for info in self._inner.list():
            yield info

    async def close(self) -> None:
        await self._inner.close()
