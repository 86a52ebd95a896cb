"""``nix+file://``: binary caches written by the real ``nix copy``, read back as path infos.

One module fixture builds the caches with Nix: a signing key from
``nix key generate-secret``, a tree added with ``nix-store --add``, and
``nix copy --to file://…?compression=xz|none&secret-key=…``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from clients.errors import InvalidRequest, StorageError
from clients.store.ingest import export_node
from clients.store.model import PathInfo
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.nar import NarError
from nixcompat.narinfo import NarInfo
from nixcompat.signing import SigningKey
from nixcompat.storepath import StorePath, make_fixed_output_path
from tests.conftest import require_tool
from tests.store.bridge_fixtures import malicious_nars, nix_add, nix_dump, rich_tree, stored
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.store.nixfile import NixFileConfig, NixFilePathInfoService
from tvixd.store.pathinfo.cache import Cache
from tvixd.store.pathinfo.memory import MemoryPathInfoService
from tvixd.store.registry import PATH_INFO_BACKENDS, path_info_service_from_url

NIX = ["--extra-experimental-features", "nix-command"]


@dataclass(frozen=True)
class Caches:
    tree: Path
    nar: bytes
    store_path: StorePath
    public_key: str
    xz: Path
    none: Path


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> Caches:
    nix = require_tool("nix")
    base = tmp_path_factory.mktemp("nixfile")
    tree = rich_tree(base / "nixfile-tree")
    (added,) = nix_add([tree])
    secret = base / "secret.key"
    generate = [nix, *NIX, "key", "generate-secret", "--key-name", "test-1"]
    secret.write_bytes(subprocess.run(generate, capture_output=True, check=True).stdout)
    public = str(SigningKey.parse(secret.read_text().strip()).to_public())
    for compression in ("xz", "none"):
        url = f"file://{base / compression}?compression={compression}&secret-key={secret}"
        subprocess.run([nix, *NIX, "copy", "--to", url, added], capture_output=True, check=True)
    return Caches(
        tree,
        nix_dump(tree),
        StorePath.from_absolute_path(added),
        public,
        base / "xz",
        base / "none",
    )


def url(cache: Path, *keys: str, extra: str = "") -> str:
    query = "trusted-public-keys=" + quote(",".join(keys), safe="") if keys else ""
    return f"nix+file://{cache}?{query}{extra}"


async def open_cache(
    address: str,
) -> tuple[NixFilePathInfoService, MemoryBlobService, MemoryDirectoryService]:
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    return await NixFilePathInfoService.from_url(address, blobs, directories), blobs, directories


@pytest.mark.asyncio
@pytest.mark.parametrize("compression", ["xz", "none"])
async def test_nix_copy_cache_is_served(caches: Caches, compression: str, tmp_path: Path) -> None:
    service, blobs, directories = await open_cache(
        url(getattr(caches, compression), caches.public_key)
    )
    info = await service.get(caches.store_path.digest)
    assert isinstance(info, PathInfo)
    assert info.store_path == caches.store_path
    assert info.nar_sha256 == hashlib.sha256(caches.nar).digest()
    assert info.nar_size == len(caches.nar)
    assert [s.name for s in info.signatures] == ["test-1"]
    assert info.ca is not None
    assert info.node.name == caches.store_path.basename.encode()
    await export_node(info.node, blobs, directories, tmp_path / "out")
    assert nix_dump(tmp_path / "out") == caches.nar
    assert [i.store_path async for i in service.list()] == [caches.store_path]
    assert await service.get(bytes(20)) is None
    with pytest.raises(InvalidRequest, match="read-only"):
        await service.put(info)
    await service.close()


@pytest.mark.asyncio
async def test_untrusted_signatures_are_rejected(caches: Caches) -> None:
    other = str(SigningKey.generate("test-1").to_public())  # same name, other key
    wrong_name = caches.public_key.replace("test-1:", "other-1:")
    for address in (url(caches.xz, other), url(caches.xz, wrong_name), url(caches.xz)):
        service, blobs, directories = await open_cache(address)
        with pytest.raises(StorageError, match="no valid signature by a trusted key"):
            await service.get(caches.store_path.digest)
        assert [i async for i in service.list()] == []  # refused paths are skipped
        assert stored(blobs, directories) == 0
    service, _, _ = await open_cache(url(caches.xz, extra="require-sigs=false"))
    assert await service.get(caches.store_path.digest) is not None


def tampered_copy(cache: Path, tmp_path: Path) -> tuple[Path, Path, NarInfo]:
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    narinfo_file = next(copy.glob("*.narinfo"))
    return copy, narinfo_file, NarInfo.parse(narinfo_file.read_text())


@pytest.mark.asyncio
@pytest.mark.parametrize("compression", ["xz", "none"])
async def test_tampered_nar_file_is_rejected(
    caches: Caches, compression: str, tmp_path: Path
) -> None:
    copy, _, narinfo = tampered_copy(getattr(caches, compression), tmp_path)
    nar_file = copy / narinfo.url
    data = bytearray(nar_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    nar_file.write_bytes(bytes(data))
    service, blobs, directories = await open_cache(url(copy, caches.public_key))
    with pytest.raises(StorageError, match=r"FileHash is sha256:|Corrupt input data"):
        await service.get(caches.store_path.digest)
    assert stored(blobs, directories) == 0


@pytest.mark.asyncio
async def test_tampered_nar_with_matching_file_hash_is_rejected(
    caches: Caches, tmp_path: Path
) -> None:
    """The attacker fixes FileHash (unsigned); NarHash (signed) still catches the change."""
    copy, narinfo_file, narinfo = tampered_copy(caches.none, tmp_path)
    nar_file = copy / narinfo.url
    data = nar_file.read_bytes().replace(b"Hello, world!", b"Hello, WORLD!")
    assert data != nar_file.read_bytes()
    nar_file.write_bytes(data)
    text = narinfo_file.read_text()
    text = re.sub(r"FileHash: .*\n", "", text)
    narinfo_file.write_text(text)
    service, blobs, directories = await open_cache(url(copy, caches.public_key))
    with pytest.raises(StorageError, match="sha256"):
        await service.get(caches.store_path.digest)
    assert stored(blobs, directories) == 0


@pytest.mark.asyncio
async def test_unsupported_compression_is_named(caches: Caches, tmp_path: Path) -> None:
    copy, narinfo_file, _ = tampered_copy(caches.xz, tmp_path)
    narinfo_file.write_text(
        narinfo_file.read_text().replace("Compression: xz", "Compression: zstd")
    )
    service, _, _ = await open_cache(url(copy, caches.public_key))
    with pytest.raises(StorageError, match="compression 'zstd' is not supported"):
        await service.get(caches.store_path.digest)


@pytest.mark.asyncio
async def test_nar_url_outside_the_cache_is_refused(caches: Caches, tmp_path: Path) -> None:
    copy, narinfo_file, narinfo = tampered_copy(caches.none, tmp_path)
    narinfo_file.write_text(narinfo_file.read_text().replace(narinfo.url, "../../etc/passwd"))
    service, _, _ = await open_cache(url(copy, caches.public_key))
    with pytest.raises(StorageError, match="not a path inside the cache"):
        await service.get(caches.store_path.digest)


@pytest.mark.asyncio
async def test_registry_with_nix_file(caches: Caches) -> None:
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    backends = {**PATH_INFO_BACKENDS, "nix+file": NixFilePathInfoService.from_url}
    service = await path_info_service_from_url(
        url(caches.xz, caches.public_key), blobs=blobs, directories=directories, backends=backends
    )
    assert await service.get(caches.store_path.digest) is not None
    await service.close()


@pytest.mark.asyncio
async def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        await open_cache(f"nix+file://{tmp_path}/nope")


KEY = "cache-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="


@pytest.mark.parametrize(
    ("address", "keys", "require_sigs"),
    [
        (f"nix+file:///c?trusted-public-keys={KEY}", [KEY], True),
        (f"nix+file:///c?trusted-public-keys={quote(KEY, safe='')}", [KEY], True),
        (
            f"nix+file:///c?trusted-public-keys={KEY},{KEY.replace('cache-1', 'b')}",
            [KEY, KEY.replace("cache-1", "b")],
            True,
        ),
        (f"nix+file:///c?trusted-public-keys={KEY}%20{KEY}", [KEY, KEY], True),
        ("nix+file:///c", [], True),
        ("nix+file:///c/?require-sigs=false", [], False),
    ],
)
def test_url_accepted(address: str, keys: list[str], require_sigs: bool) -> None:
    config = NixFileConfig.from_url(address)
    assert [str(k) for k in config.trusted_keys] == keys
    assert config.require_sigs is require_sigs
    assert config.root.as_posix().rstrip("/") == "/c"


@pytest.mark.parametrize(
    "address",
    [
        "nix+file://host/c",
        "nix+file://",
        "nix+file:///",
        "nix+file:relative",
        "file:///c",
        "nix+file:///c?trusted-public-keys=notakey",
        "nix+file:///c?require-sigs=maybe",
        "nix+file:///c?compression=xz",
        "nix+file:///c?require-sigs=true&require-sigs=false",
        "nix+file:///c#fragment",
    ],
)
def test_url_rejected(address: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(repr(address))):
        NixFileConfig.from_url(address)


def signed_cache(root: Path, nar: bytes, key: SigningKey) -> StorePath:
    """A one-path binary cache holding ``nar`` (any bytes), correctly signed by ``key``."""
    nar_hash = NixHash(HashAlgo.sha256, hashlib.sha256(nar).digest())
    path = make_fixed_output_path("evil", nar_hash, recursive=True)
    (root / "nar").mkdir(parents=True)
    (root / "nar" / "evil.nar").write_bytes(nar)
    narinfo = NarInfo(
        store_path=path,
        url="nar/evil.nar",
        compression="none",
        nar_hash=nar_hash,
        nar_size=len(nar),
    ).signed(key)
    (root / f"{path.hash_part}.narinfo").write_text(narinfo.render())
    return path


@pytest.mark.asyncio
@pytest.mark.parametrize(("name", "nar"), malicious_nars(), ids=[n for n, _ in malicious_nars()])
async def test_signed_malicious_nar_leaves_the_store_unchanged(
    name: str, nar: bytes, tmp_path: Path
) -> None:
    """A trusted signer's malformed NAR: rejected with the offset, nothing stored anywhere."""
    key = SigningKey.generate("evil-1")
    path = signed_cache(tmp_path / "cache", nar, key)
    service, blobs, directories = await open_cache(url(tmp_path / "cache", str(key.to_public())))
    near = MemoryPathInfoService()
    cache = Cache(near, service)
    with pytest.raises(StorageError, match="offset") as caught:
        await cache.get(path.digest)
    assert isinstance(caught.value.__cause__, NarError)
    assert stored(blobs, directories, near) == 0


@pytest.mark.asyncio
async def test_signed_valid_nar_through_cache(caches: Caches, tmp_path: Path) -> None:
    """The same flow with a good NAR: the near store gets the path info."""
    key = SigningKey.generate("good-1")
    path = signed_cache(tmp_path / "cache", caches.nar, key)
    service, blobs, directories = await open_cache(url(tmp_path / "cache", str(key.to_public())))
    near = MemoryPathInfoService()
    info = await Cache(near, service).get(path.digest)
    assert info is not None
    assert await near.get(path.digest) == info
    await export_node(info.node, blobs, directories, tmp_path / "out")
    assert nix_dump(tmp_path / "out") == caches.nar
