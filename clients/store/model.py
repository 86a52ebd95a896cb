"""The store's domain type: a path info maps a Nix store path onto a castore root node.

Invariants, as in ``clients.castore.model``:

* Construction checks Python types only (and turns iterables into tuples), so
  an invalid path info is still representable and can be rejected with a
  precise message.  :meth:`PathInfo.validate` checks every PROTOCOL.md rule
  (tvix.store.v1); every ``PathInfoService.put`` calls it before storing, and
  ``clients.store.wire`` calls it on every decoded message.
* The root node's name is the store path's basename (``<hash>-<name>``, ASCII),
  exactly: ``node.name == store_path.basename.encode()``.
* References are kept in the order given (the wire keeps digests and names
  in parallel lists); Nix treats them as a set, so :meth:`fingerprint` and
  :meth:`to_narinfo` sort and deduplicate them.
* ``nar_sha256`` is the 32-byte sha256 of the path's NAR serialisation,
  ``nar_size`` its length; ``deriver``, when known, is a ``.drv`` path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from clients.castore.model import DIGEST_LENGTH, DirectoryNode, FileNode, Node, SymlinkNode
from clients.errors import InvalidRequest
from nixcompat.errors import NixCompatError
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.narinfo import ContentAddress, NarInfo, fingerprint
from nixcompat.signing import Signature, SigningKey
from nixcompat.storepath import DIGEST_SIZE, StorePath

__all__ = [
    "NAR_SHA256_LENGTH",
    "STORE_PATH_DIGEST_LENGTH",
    "PathInfo",
    "check_node",
    "references_of",
    "store_path_digest",
    "with_name",
]

NAR_SHA256_LENGTH = 32
STORE_PATH_DIGEST_LENGTH = DIGEST_SIZE
UINT64_MAX = (1 << 64) - 1
_NODE_TYPES = (DirectoryNode, FileNode, SymlinkNode)


def with_name(node: Node, name: bytes) -> Node:
    """``node`` renamed to ``name`` (a NAR root and a CalculateNAR request carry no name)."""
    return dataclasses.replace(node, name=name)


def check_node(node: Node, where: str) -> None:
    """The rules a root node obeys besides its name: digest length, symlink target.

    Raises :class:`InvalidRequest` mentioning ``where``.
    """
    if isinstance(node, SymlinkNode):
        if not node.target:
            raise InvalidRequest(f"{where}: symlink {node.name!r} has an empty target")
        if b"\0" in node.target:
            raise InvalidRequest(
                f"{where}: symlink {node.name!r} target {node.target[:80]!r} contains NUL"
            )
    elif len(node.digest) != DIGEST_LENGTH:
        kind = "directory" if isinstance(node, DirectoryNode) else "file"
        raise InvalidRequest(
            f"{where}: {kind} node {node.name!r} has a digest of {len(node.digest)} bytes "
            f"({node.digest[:40].hex()}), expected {DIGEST_LENGTH}"
        )


def store_path_digest(value: object, field: str) -> bytes:
    """A 20-byte store path digest from the wire; InvalidRequest naming ``field`` otherwise."""
    if not isinstance(value, bytes) or len(value) != STORE_PATH_DIGEST_LENGTH:
        size = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        shown = f" ({value[:40].hex()})" if isinstance(value, bytes) and value else ""
        raise InvalidRequest(
            f"{field} must be a {STORE_PATH_DIGEST_LENGTH}-byte store path digest, got {size}{shown}"
        )
    return value


def _check_type(field: str, value: object, kind: type | tuple[type, ...]) -> None:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = kind.__name__ if isinstance(kind, type) else " | ".join(k.__name__ for k in kind)
        raise TypeError(f"PathInfo.{field} must be {names}, got {type(value).__name__}")


@dataclass(frozen=True, kw_only=True)
class PathInfo:
    """A store path, its castore root node, references, NAR hash and size, signatures.

    See the module docstring for the invariants; lists given as any iterable
    are stored as tuples.
    """

    store_path: StorePath
    node: Node
    references: tuple[StorePath, ...] = ()
    nar_size: int
    nar_sha256: bytes
    signatures: tuple[Signature, ...] = ()
    deriver: StorePath | None = None
    ca: ContentAddress | None = None

    def __post_init__(self) -> None:
        _check_type("store_path", self.store_path, StorePath)
        _check_type("node", self.node, _NODE_TYPES)
        for field, kind in (("references", StorePath), ("signatures", Signature)):
            items = tuple(getattr(self, field))
            for item in items:
                _check_type(field + "[]", item, kind)
            object.__setattr__(self, field, items)
        _check_type("nar_size", self.nar_size, int)
        _check_type("nar_sha256", self.nar_sha256, bytes)
        if self.deriver is not None:
            _check_type("deriver", self.deriver, StorePath)
        if self.ca is not None:
            _check_type("ca", self.ca, ContentAddress)

    @property
    def digest(self) -> bytes:
        """The 20-byte store path digest: the key path infos are stored and looked up by."""
        return self.store_path.digest

    def validate(self) -> None:
        """Check every PROTOCOL.md rule; :class:`InvalidRequest` names the rule and the value."""
        where = f"path info {self.store_path.basename}"
        name = self.node.name
        if name != self.store_path.basename.encode():
            try:
                named = StorePath.parse_basename(name.decode("ascii"))
            except (UnicodeDecodeError, NixCompatError) as exc:
                raise InvalidRequest(
                    f"{where}: root node name {name[:120]!r} is not a store path basename ({exc})"
                ) from None
            raise InvalidRequest(
                f"{where}: root node name {named.basename!r} does not match the store path"
            )
        check_node(self.node, where)
        if len(self.nar_sha256) != NAR_SHA256_LENGTH:
            raise InvalidRequest(
                f"{where}: nar_sha256 has {len(self.nar_sha256)} bytes "
                f"({self.nar_sha256[:80].hex()}), expected {NAR_SHA256_LENGTH}"
            )
        if not 0 <= self.nar_size <= UINT64_MAX:
            raise InvalidRequest(f"{where}: nar_size {self.nar_size} is outside the uint64 range")
        if self.deriver is not None and not self.deriver.is_derivation:
            raise InvalidRequest(f"{where}: deriver {self.deriver.basename!r} does not end in .drv")

    def nar_hash(self) -> NixHash:
        """``nar_sha256`` as a :class:`NixHash` (InvalidRequest when it is not 32 bytes)."""
        try:
            return NixHash(HashAlgo.sha256, self.nar_sha256)
        except NixCompatError as exc:
            raise InvalidRequest(f"path info {self.store_path.basename}: {exc}") from exc

    def fingerprint(self) -> str:
        """Nix's fingerprint ``1;<path>;sha256:<nixbase32>;<size>;<sorted refs>`` (what signatures sign).

        InvalidRequest when it cannot be formed (``nar_size`` 0, a bad NAR hash).
        """
        try:
            return fingerprint(self.store_path, self.nar_hash(), self.nar_size, self.references)
        except NixCompatError as exc:
            raise InvalidRequest(str(exc)) from exc

    def with_signature(self, signature: Signature) -> PathInfo:
        """A copy with ``signature`` appended; unchanged when already present (no duplicates)."""
        if signature in self.signatures:
            return self
        return dataclasses.replace(self, signatures=(*self.signatures, signature))

    def signed(self, key: SigningKey) -> PathInfo:
        """A copy with ``key``'s ed25519 signature over :meth:`fingerprint` added."""
        return self.with_signature(key.sign(self.fingerprint()))

    def to_narinfo(
        self,
        *,
        url: str,
        compression: str = "none",
        file_hash: NixHash | None = None,
        file_size: int | None = None,
        system: str | None = None,
    ) -> NarInfo:
        """The ``.narinfo`` for this path (references sorted and deduplicated, as Nix writes them).

        ``url``, ``compression`` and the file hash/size describe the NAR file
        of a binary cache, which a path info does not know.  InvalidRequest
        when the values do not make a valid narinfo (e.g. ``nar_size`` 0).
        """
        try:
            return NarInfo(
                store_path=self.store_path,
                url=url,
                compression=compression,
                file_hash=file_hash,
                file_size=file_size,
                nar_hash=self.nar_hash(),
                nar_size=self.nar_size,
                references=tuple(sorted(set(self.references))),
                deriver=self.deriver,
                system=system,
                signatures=self.signatures,
                ca=self.ca,
            )
        except NixCompatError as exc:
            raise InvalidRequest(f"path info {self.store_path.basename}: {exc}") from exc

    @classmethod
    def from_narinfo(cls, narinfo: NarInfo, node: Node) -> PathInfo:
        """The path info of ``narinfo`` whose contents are ``node`` (renamed to the basename)."""
        return cls(
            store_path=narinfo.store_path,
            node=with_name(node, narinfo.store_path.basename.encode()),
            references=narinfo.references,
            nar_size=narinfo.nar_size,
            nar_sha256=narinfo.nar_hash.digest,
            signatures=narinfo.signatures,
            deriver=narinfo.deriver,
            ca=narinfo.ca,
        )

    def __repr__(self) -> str:
        extra = f", {len(self.signatures)} sigs" if self.signatures else ""
        return (
            f"PathInfo({self.store_path.basename}, {self.node!r}, "
            f"{len(self.references)} refs, nar {self.nar_size} bytes{extra})"
        )


def references_of(paths: Iterable[StorePath]) -> tuple[StorePath, ...]:
    """``paths`` sorted and deduplicated: the canonical (Nix) form of a reference set."""
    return tuple(sorted(set(paths)))
