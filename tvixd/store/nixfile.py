"""``nix+file:///dir``: a classic Nix binary cache directory, served read-only as path infos.

The directory is what ``nix copy --to file:///dir`` writes: ``nix-cache-info``,
``<hashpart>.narinfo`` per path, and the NARs under ``nar/``
(``<filehash>.nar[.xz|.bz2]``).  ``get(digest)``:

1. reads and parses ``<hashpart>.narinfo`` (absent: ``None``);
2. checks that it names the store path asked for, and that one of its
   signatures verifies with a trusted public key of the same name;
3. decompresses the NAR it points to (``xz``, ``bzip2`` or ``none``; other
   compressions, e.g. ``zstd``, have no decompressor in the standard library
   and are refused by name) into a temporary file, checking ``FileSize`` /
   ``FileHash`` on the compressed bytes and never writing more than
   ``NarSize`` bytes (decompression bombs);
4. imports it into the castore (``clients.store.nar.import_nar_file``), which
   rejects non-canonical NARs and checks ``NarHash`` / ``NarSize`` *before*
   storing anything;
5. returns the path info (narinfo fields, the imported root node).

Trust: the URL's ``trusted-public-keys`` (``name:base64``, comma or space
separated) are the only keys accepted.  Like Nix with ``require-sigs = true``
(its default), a path without a valid signature by one of them is refused —
with no keys configured, every path is refused.  ``require-sigs=false`` in the
URL turns the check off (explicitly; for caches you control).  Refusals and
corrupt caches raise ``StorageError`` naming the path and the problem; they
are not ``None``, because the path *is* there and silently pretending
otherwise would hide a misconfiguration.

What it deliberately does not do: write (``put`` raises ``InvalidRequest``),
cache (every ``get`` imports again — deduplicated by the castore, but the NAR
is still decompressed and scanned; wrap it as ``Cache(near, nix+file)``),
trust content addresses without signatures (Nix does for CA paths), or serve
``nix-cache-info``'s ``Priority``/``WantMassQuery``.  ``list`` imports every
path in the cache (it must return complete path infos) and skips, with a
warning, those it refuses.

URL: ``nix+file:///abs/dir?trusted-public-keys=cache-1:AbC…=,other:…&require-sigs=true``
(percent-encode as needed; ``+`` in keys is kept as ``+``).
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import logging
import lzma
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread

from clients.castore.protocols import BlobService, DirectoryService
from clients.errors import InvalidRequest, StorageError
from clients.store.model import PathInfo, store_path_digest
from clients.store.nar import import_nar_file
from nixcompat import nixbase32
from nixcompat.errors import NixCompatError
from nixcompat.hash import NixHash
from nixcompat.nar import NarError
from nixcompat.narinfo import NarInfo
from nixcompat.signing import VerifyingKey

log = logging.getLogger(__name__)

SCHEME = "nix+file"
_CHUNK = 1 << 20


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = ...) -> bytes: ...


_DECOMPRESSORS: dict[str, Callable[[], _Decompressor] | None] = {
    "none": None,
    "xz": lzma.LZMADecompressor,
    "bzip2": bz2.BZ2Decompressor,
}


@dataclass(frozen=True)
class NixFileConfig:
    """What a ``nix+file://`` URL says: the directory and the trust policy."""

    root: Path
    trusted_keys: tuple[VerifyingKey, ...] = ()
    require_sigs: bool = True

    @classmethod
    def from_url(cls, url: str) -> NixFileConfig:
        """Parse the URL (see the module docstring); ``InvalidRequest`` quoting it when bad."""
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise InvalidRequest(f"invalid URL {url!r}: {exc}") from exc
        if parts.scheme != SCHEME:
            raise InvalidRequest(f"invalid URL {url!r}: expected the scheme {SCHEME}://")
        if parts.netloc:
            raise InvalidRequest(
                f"invalid URL {url!r}: {SCHEME}:// takes no host; write {SCHEME}:///absolute/dir"
            )
        if parts.fragment:
            raise InvalidRequest(f"invalid URL {url!r}: {SCHEME}:// takes no fragment")
        path = unquote(parts.path)
        if not path.startswith("/") or "\0" in path or path.rstrip("/") == "":
            raise InvalidRequest(f"invalid URL {url!r}: needs an absolute directory path")
        keys: list[VerifyingKey] = []
        require_sigs = True
        seen: set[str] = set()
        for item in filter(None, parts.query.split("&")):
            name, eq, raw = item.partition("=")
            value = unquote(raw)  # not unquote_plus: base64 keys contain '+'
            if not eq or name in seen:
                raise InvalidRequest(f"invalid URL {url!r}: bad or repeated parameter {item!r}")
            seen.add(name)
            if name == "trusted-public-keys":
                for text in value.replace(",", " ").split():
                    try:
                        keys.append(VerifyingKey.parse(text))
                    except NixCompatError as exc:
                        raise InvalidRequest(f"invalid URL {url!r}: {exc}") from exc
            elif name == "require-sigs":
                if value not in ("true", "false"):
                    raise InvalidRequest(f"invalid URL {url!r}: require-sigs must be true or false")
                require_sigs = value == "true"
            else:
                raise InvalidRequest(
                    f"invalid URL {url!r}: unknown parameter {name!r} "
                    "(known: trusted-public-keys, require-sigs)"
                )
        return cls(Path(path), tuple(keys), require_sigs)


def _prepare_nar(
    source: Path, compression: str, narinfo: NarInfo, tmp_dir: str | None
) -> tuple[Path, bool]:
    """Check the NAR file's size and hash; decompress it to a temp file when compressed.

    Returns the NAR's path and whether it is a temporary file (for the caller
    to delete).  Runs on a worker thread.
    """
    where = f"NAR file {source} of {narinfo.store_path}"
    factory = _DECOMPRESSORS[compression]
    algo = narinfo.file_hash.algo.value if narinfo.file_hash is not None else "sha256"
    file_hasher = hashlib.new(algo)
    file_size = 0
    out = None
    name = None
    ok = False
    try:
        with source.open("rb") as src:
            decompressor = factory() if factory is not None else None
            if decompressor is not None:
                fd, name = tempfile.mkstemp(prefix="tvix-nixfile-", suffix=".nar", dir=tmp_dir)
                out = os.fdopen(fd, "wb")
            written = 0
            while chunk := src.read(_CHUNK):
                file_hasher.update(chunk)
                file_size += len(chunk)
                if decompressor is None:
                    continue
                if decompressor.eof:
                    raise StorageError(f"{where}: data after the end of the compressed stream")
                data = decompressor.decompress(chunk, _CHUNK)
                while True:
                    written += len(data)
                    if written > narinfo.nar_size:
                        raise StorageError(
                            f"{where}: decompresses to more than NarSize {narinfo.nar_size} bytes"
                        )
                    assert out is not None
                    out.write(data)
                    if decompressor.eof or decompressor.needs_input:
                        break
                    data = decompressor.decompress(b"", _CHUNK)
            if decompressor is not None and (not decompressor.eof or decompressor.unused_data):
                raise StorageError(
                    f"{where}: the {compression} stream is truncated or has trailing data"
                )
        if narinfo.file_size is not None and file_size != narinfo.file_size:
            raise StorageError(f"{where}: {file_size} bytes, but FileSize says {narinfo.file_size}")
        if narinfo.file_hash is not None and file_hasher.digest() != narinfo.file_hash.digest:
            got = NixHash(narinfo.file_hash.algo, file_hasher.digest())
            raise StorageError(
                f"{where}: FileHash is {got}, but the narinfo says {narinfo.file_hash}"
            )
        if out is not None:
            out.close()
        ok = True
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise StorageError(f"{where}: cannot read or decompress ({compression}): {exc}") from exc
    finally:
        if out is not None and not out.closed:
            out.close()
        if not ok and name is not None:
            with contextlib.suppress(OSError):
                os.unlink(name)
    return (Path(name), True) if name is not None else (source, False)


class NixFilePathInfoService:
    """Read-only ``PathInfoService`` over a Nix binary cache directory (see the module docs)."""

    def __init__(
        self,
        config: NixFileConfig,
        blobs: BlobService,
        directories: DirectoryService,
        *,
        tmp_dir: str | None = None,
    ) -> None:
        self._config = config
        self._blobs = blobs
        self._directories = directories
        self._tmp_dir = tmp_dir

    @classmethod
    async def open(
        cls, config: NixFileConfig, blobs: BlobService, directories: DirectoryService
    ) -> NixFilePathInfoService:
        """Check that the directory is a binary cache for ``/nix/store``."""
        info = config.root / "nix-cache-info"
        try:
            text = await anyio.to_thread.run_sync(info.read_text)
        except FileNotFoundError:
            if not await anyio.to_thread.run_sync(config.root.is_dir):
                raise StorageError(f"binary cache directory {config.root} does not exist") from None
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise StorageError(f"cannot read {info}: {exc}") from exc
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "StoreDir" and value.strip() != "/nix/store":
                raise StorageError(
                    f"binary cache {config.root} is for the store {value.strip()!r}, not /nix/store"
                )
        return cls(config, blobs, directories)

    @classmethod
    async def from_url(
        cls, url: str, blobs: BlobService, directories: DirectoryService
    ) -> NixFilePathInfoService:
        """The registry constructor: ``(url, blobs, directories) -> service``."""
        return await cls.open(NixFileConfig.from_url(url), blobs, directories)

    def __repr__(self) -> str:
        keys = ",".join(k.name for k in self._config.trusted_keys) or "none"
        return f"NixFilePathInfoService({str(self._config.root)!r}, trusted={keys})"

    async def _narinfo(self, hash_part: str) -> NarInfo | None:
        path = self._config.root / f"{hash_part}.narinfo"
        try:
            text = await anyio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc
        try:
            return NarInfo.parse(text)
        except NixCompatError as exc:
            raise StorageError(f"{path} is not a valid narinfo: {exc}") from exc

    def _check_trust(self, narinfo: NarInfo) -> None:
        if not self._config.require_sigs or narinfo.verify(self._config.trusted_keys):
            return
        sigs = ", ".join(s.name for s in narinfo.signatures) or "none"
        keys = ", ".join(k.name for k in self._config.trusted_keys) or "none configured"
        raise StorageError(
            f"{narinfo.store_path} in binary cache {self._config.root} has no valid signature "
            f"by a trusted key (signatures by: {sigs}; trusted keys: {keys})"
        )

    def _nar_file(self, narinfo: NarInfo) -> Path:
        url = PurePosixPath(narinfo.url)
        if url.is_absolute() or ":" in narinfo.url or ".." in url.parts or not url.parts:
            raise StorageError(
                f"{narinfo.store_path}: NAR URL {narinfo.url!r} is not a path inside the cache"
            )
        if narinfo.compression not in _DECOMPRESSORS:
            raise StorageError(
                f"{narinfo.store_path}: compression {narinfo.compression!r} is not supported "
                f"(supported: {', '.join(_DECOMPRESSORS)}); re-copy with ?compression=xz"
            )
        return self._config.root / url

    async def get(self, digest: bytes) -> PathInfo | None:
        hash_part = nixbase32.encode(store_path_digest(digest, "digest"))
        narinfo = await self._narinfo(hash_part)
        if narinfo is None:
            return None
        if narinfo.store_path.digest != digest:
            raise StorageError(f"{hash_part}.narinfo describes {narinfo.store_path}")
        self._check_trust(narinfo)
        source = self._nar_file(narinfo)
        nar, temporary = await anyio.to_thread.run_sync(
            _prepare_nar, source, narinfo.compression, narinfo, self._tmp_dir
        )
        try:
            imported = await import_nar_file(
                nar,
                self._blobs,
                self._directories,
                expected_nar_sha256=narinfo.nar_hash.digest,
                expected_nar_size=narinfo.nar_size,
            )
        except (NarError, InvalidRequest) as exc:
            raise StorageError(f"NAR of {narinfo.store_path} in {source}: {exc}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read the NAR of {narinfo.store_path}: {exc}") from exc
        finally:
            if temporary:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(lambda: nar.unlink(missing_ok=True))
        info = PathInfo.from_narinfo(narinfo, imported.node)
        try:
            info.validate()
        except InvalidRequest as exc:
            raise StorageError(f"{narinfo.store_path}: {exc}") from exc
        return info

    async def put(self, info: PathInfo) -> PathInfo:
        raise InvalidRequest(
            f"cannot put {info.store_path}: {SCHEME}://{self._config.root} is read-only"
        )

    async def list(self) -> AsyncIterator[PathInfo]:
        """Every trusted path in the cache (importing each); refused ones are logged and skipped."""

        def names() -> list[str]:
            with os.scandir(self._config.root) as entries:
                return sorted(e.name for e in entries if e.name.endswith(".narinfo"))

        try:
            found = await anyio.to_thread.run_sync(names)
        except OSError as exc:
            raise StorageError(f"cannot list {self._config.root}: {exc}") from exc
        for name in found:
            try:
                digest = nixbase32.decode(name.removesuffix(".narinfo"))
                info = await self.get(store_path_digest(digest, name))
            except (NixCompatError, InvalidRequest, StorageError) as exc:
                log.warning("skipping %s in %s: %s", name, self._config.root, exc)
                continue
            if info is not None:
                yield info

    async def close(self) -> None:
        """Nothing held; the castore services belong to the caller."""
