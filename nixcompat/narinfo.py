"""Binary cache ``.narinfo`` files: parsing, rendering, fingerprints, signatures.

A narinfo is a list of ``Key: value`` lines, each ending in ``\\n``.
:meth:`NarInfo.render` writes exactly what Nix 2.8 writes (``nix copy --to
file://…``), in its field order::

    StorePath: /nix/store/<hash>-<name>
    URL: nar/<filehash>.nar.xz
    Compression: xz
    FileHash: sha256:<nixbase32>          (when known)
    FileSize: <bytes>                     (when known)
    NarHash: sha256:<nixbase32>
    NarSize: <bytes>
    References: <basename> <basename> …   (possibly empty: "References: ")
    Deriver: <basename>                   (when known)
    System: <system>                      (when known)
    Sig: <name>:<base64>                  (one line per signature)
    CA: fixed:r:sha256:<nixbase32>        (content-addressed paths only)

:meth:`NarInfo.parse` is stricter than Nix but reads everything Nix writes:

* ``StorePath``, ``URL``, ``NarHash`` and ``NarSize`` are required; a missing
  ``Compression`` means ``bzip2`` (as in Nix).  Unknown keys are ignored, as
  in Nix (and are not kept: rendering drops them).
* Every known key but ``Sig`` may appear at most once; values may not be empty
  (except ``References``).  Every line must be ``Key: value`` and end in a
  newline (not CRLF).  Errors name the 1-based line number.
* Numbers are canonical decimals below 2**64; ``NarSize`` must not be 0 (Nix
  calls such a narinfo corrupt).
* ``NarHash`` must be sha256; it may be written in any form Nix accepts
  (hex, nixbase32, base64, SRI) and is rendered and fingerprinted as
  ``sha256:<nixbase32>``.  ``FileHash`` may use any algorithm.
* ``Deriver: unknown-deriver`` (written by old Nix versions) means "no
  deriver", as in Nix.
* A ``Sig`` line that is not a well-formed signature makes the whole narinfo
  invalid (Nix would keep the string and fail to verify it; tvix rejects it
  too).  Signatures and references are kept in the order written; Nix
  writes both sorted, which :meth:`NarInfo.with_signature` maintains.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from nixcompat.errors import NixCompatError
from nixcompat.hash import HashAlgo, InvalidHash, NixHash
from nixcompat.signing import InvalidSignature, Signature, SigningKey, VerifyingKey, verify_any
from nixcompat.storepath import InvalidStorePath, StorePath

__all__ = ["CaMethod", "ContentAddress", "InvalidNarInfo", "NarInfo", "fingerprint"]

_UINT64_MAX = 2**64 - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_UNKNOWN_DERIVER = "unknown-deriver"


class InvalidNarInfo(NixCompatError):
    """A narinfo (or a value of one) that is malformed."""


class CaMethod(enum.Enum):
    """How a content-addressed path was hashed."""

    text = "text"
    flat = "flat"
    recursive = "recursive"


@dataclass(frozen=True)
class ContentAddress:
    """A ``CA:`` value: ``text:sha256:<h>``, ``fixed:<algo>:<h>`` or ``fixed:r:<algo>:<h>``."""

    method: CaMethod
    hash: NixHash

    def __post_init__(self) -> None:
        if self.method is CaMethod.text and self.hash.algo is not HashAlgo.sha256:
            raise InvalidNarInfo(f"a text content address must use sha256, not {self.hash}")

    @classmethod
    def parse(cls, s: str) -> ContentAddress:
        """Parse Nix's ``renderContentAddress`` form; the digest may be hex, nixbase32 or base64."""
        prefix, _, rest = s.partition(":")
        if prefix == "text":
            method = CaMethod.text
        elif prefix == "fixed":
            method = CaMethod.flat
            if rest.startswith("r:"):
                method, rest = CaMethod.recursive, rest[2:]
        else:
            raise InvalidNarInfo(
                f"invalid content address {s!r}: expected 'text:' or 'fixed:' at the start"
            )
        algo_name, colon, digest = rest.partition(":")
        if not colon or ":" in digest or "-" in digest:
            raise InvalidNarInfo(f"invalid content address {s!r}: expected '<algo>:<digest>'")
        try:
            algo = HashAlgo.parse(algo_name)
            return cls(method, NixHash.parse(digest, algo))
        except InvalidHash as exc:
            raise InvalidNarInfo(f"invalid content address {s!r}: {exc}") from exc

    def __str__(self) -> str:
        prefix = {CaMethod.text: "text:", CaMethod.flat: "fixed:", CaMethod.recursive: "fixed:r:"}
        return prefix[self.method] + self.hash.to_nix_string()


def _check_value(field: str, value: str) -> None:
    if "\n" in value or "\r" in value:
        raise InvalidNarInfo(f"{field} {value!r} contains a line break")
    if not value:
        raise InvalidNarInfo(f"{field} is empty")


def _check_size(field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT64_MAX:
        raise InvalidNarInfo(f"{field} {value!r} is not an integer between 0 and 2**64-1")


@dataclass(frozen=True, kw_only=True)
class NarInfo:
    """One ``.narinfo``; fields in rendering order, invariants checked on construction."""

    store_path: StorePath
    url: str
    compression: str
    file_hash: NixHash | None = None
    file_size: int | None = None
    nar_hash: NixHash
    nar_size: int
    references: tuple[StorePath, ...] = ()
    deriver: StorePath | None = None
    system: str | None = None
    signatures: tuple[Signature, ...] = ()
    ca: ContentAddress | None = None

    def __post_init__(self) -> None:
        _check_value("URL", self.url)
        _check_value("Compression", self.compression)
        if self.system is not None:
            _check_value("System", self.system)
        if self.nar_hash.algo is not HashAlgo.sha256:
            raise InvalidNarInfo(f"NarHash must be a sha256 hash, not {self.nar_hash}")
        _check_size("NarSize", self.nar_size)
        if self.nar_size == 0:
            raise InvalidNarInfo("NarSize must not be 0 (Nix treats such a narinfo as corrupt)")
        if self.file_size is not None:
            _check_size("FileSize", self.file_size)
        object.__setattr__(self, "references", tuple(self.references))
        object.__setattr__(self, "signatures", tuple(self.signatures))

    @classmethod
    def parse(cls, text: str | bytes) -> NarInfo:
        """Parse a narinfo (see the module docstring); raises :class:`InvalidNarInfo`."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidNarInfo(
                    f"narinfo is not UTF-8 (byte offset {exc.start}: {text[exc.start : exc.end]!r})"
                ) from None
        if not text:
            raise InvalidNarInfo("narinfo is empty")
        lines = text.split("\n")
        if lines[-1]:
            raise InvalidNarInfo(
                f"line {len(lines)} does not end with a newline: {lines[-1][:100]!r}"
            )
        fields: dict[str, tuple[int, str]] = {}
        sigs: list[Signature] = []
        for lineno, line in enumerate(lines[:-1], 1):
            if line.endswith("\r"):
                raise InvalidNarInfo(f"line {lineno} ends in a carriage return (CRLF line ending)")
            colon = line.find(":")
            if colon <= 0 or line[colon + 1 : colon + 2] != " ":
                raise InvalidNarInfo(f"line {lineno}: expected 'Key: value', got {line[:100]!r}")
            key, value = line[:colon], line[colon + 2 :]
            if key == "Sig":
                try:
                    sigs.append(Signature.parse(value))
                except InvalidSignature as exc:
                    raise InvalidNarInfo(f"line {lineno}: bad Sig: {exc}") from exc
            elif key in _KNOWN:
                if key in fields:
                    raise InvalidNarInfo(
                        f"line {lineno}: duplicate {key} (first on line {fields[key][0]})"
                    )
                if not value and key != "References":
                    raise InvalidNarInfo(f"line {lineno}: {key} is empty")
                fields[key] = (lineno, value)
        return _build(fields, tuple(sigs))

    def render(self) -> str:
        """The narinfo text, byte for byte as Nix 2.8 writes it for these values."""
        out = [
            f"StorePath: {self.store_path.absolute}\n",
            f"URL: {self.url}\n",
            f"Compression: {self.compression}\n",
        ]
        if self.file_hash is not None:
            out.append(f"FileHash: {self.file_hash.to_nix_string()}\n")
        if self.file_size is not None:
            out.append(f"FileSize: {self.file_size}\n")
        out.append(f"NarHash: {self.nar_hash.to_nix_string()}\n")
        out.append(f"NarSize: {self.nar_size}\n")
        out.append("References: " + " ".join(r.basename for r in self.references) + "\n")
        if self.deriver is not None:
            out.append(f"Deriver: {self.deriver.basename}\n")
        if self.system is not None:
            out.append(f"System: {self.system}\n")
        out.extend(f"Sig: {sig}\n" for sig in self.signatures)
        if self.ca is not None:
            out.append(f"CA: {self.ca}\n")
        return "".join(out)

    def fingerprint(self) -> str:
        """What signatures sign; see the module-level :func:`fingerprint`."""
        return fingerprint(self.store_path, self.nar_hash, self.nar_size, self.references)

    def with_signature(self, signature: Signature) -> NarInfo:
        """A copy with ``signature`` added; signatures become a sorted set, as Nix keeps them."""
        sigs = sorted(set(self.signatures) | {signature}, key=str)
        return dataclasses.replace(self, signatures=tuple(sigs))

    def signed(self, key: SigningKey) -> NarInfo:
        """A copy with ``key``'s signature over :meth:`fingerprint` added."""
        return self.with_signature(key.sign(self.fingerprint()))

    def verify(self, trusted_keys: Iterable[VerifyingKey]) -> bool:
        """Whether some signature verifies with a trusted key of the same name.

        Signatures only: Nix additionally trusts a content-addressed path whose
        store path matches its ``CA``, which this does not check.
        """
        return verify_any(self.fingerprint(), self.signatures, trusted_keys)


def fingerprint(
    store_path: StorePath, nar_hash: NixHash, nar_size: int, references: Iterable[StorePath]
) -> str:
    """Nix's path fingerprint: ``1;<path>;sha256:<nixbase32>;<nar size>;<refs>``.

    References are absolute, sorted and deduplicated, joined by commas (Nix
    fingerprints its reference *set*, whatever order a narinfo lists them in).
    Like Nix, refuses a zero NAR size; unlike Nix, insists on sha256.
    """
    if nar_hash.algo is not HashAlgo.sha256:
        raise InvalidNarInfo(f"cannot fingerprint {store_path}: NarHash {nar_hash} is not sha256")
    if nar_size <= 0:
        raise InvalidNarInfo(f"cannot fingerprint {store_path}: its NAR size is {nar_size}")
    refs = ",".join(r.absolute for r in sorted(set(references)))
    return f"1;{store_path.absolute};{nar_hash.to_nix_string()};{nar_size};{refs}"


_KNOWN = frozenset(
    {
        *("StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize"),
        *("References", "Deriver", "System", "CA"),
    }
)


def _size(lineno: int, key: str, raw: str) -> int:
    if len(raw) > 20 or _DECIMAL.fullmatch(raw) is None or int(raw) > _UINT64_MAX:
        raise InvalidNarInfo(f"line {lineno}: {key} {raw[:100]!r} is not a decimal below 2**64")
    return int(raw)


def _hash(lineno: int, key: str, raw: str) -> NixHash:
    try:
        return NixHash.parse(raw)
    except InvalidHash as exc:
        raise InvalidNarInfo(f"line {lineno}: {key}: {exc}") from exc


def _path(lineno: int, key: str, raw: str, absolute: bool = False) -> StorePath:
    try:
        return StorePath.from_absolute_path(raw) if absolute else StorePath.parse_basename(raw)
    except InvalidStorePath as exc:
        raise InvalidNarInfo(f"line {lineno}: {key}: {exc}") from exc


def _ca(lineno: int, key: str, raw: str) -> ContentAddress:
    try:
        return ContentAddress.parse(raw)
    except InvalidNarInfo as exc:
        raise InvalidNarInfo(f"line {lineno}: {key}: {exc}") from exc


def _build(fields: dict[str, tuple[int, str]], sigs: tuple[Signature, ...]) -> NarInfo:
    """Turn the raw ``Key -> (line, value)`` map into a :class:`NarInfo`."""
    for required in ("StorePath", "URL", "NarHash", "NarSize"):
        if required not in fields:
            raise InvalidNarInfo(f"narinfo has no {required} line")

    def line(key: str) -> int:
        return fields[key][0]

    nar_hash = _hash(line("NarHash"), "NarHash", fields["NarHash"][1])
    if nar_hash.algo is not HashAlgo.sha256:
        raise InvalidNarInfo(f"line {line('NarHash')}: NarHash must be sha256, not {nar_hash}")
    nar_size = _size(line("NarSize"), "NarSize", fields["NarSize"][1])
    if nar_size == 0:
        raise InvalidNarInfo(f"line {line('NarSize')}: NarSize must not be 0 (Nix: corrupt)")
    file_hash = file_size = deriver = system = ca = None
    if "FileHash" in fields:
        file_hash = _hash(line("FileHash"), "FileHash", fields["FileHash"][1])
    if "FileSize" in fields:
        file_size = _size(line("FileSize"), "FileSize", fields["FileSize"][1])
    if "Deriver" in fields and fields["Deriver"][1] != _UNKNOWN_DERIVER:
        deriver = _path(line("Deriver"), "Deriver", fields["Deriver"][1])
    if "System" in fields:
        system = fields["System"][1]
    if "CA" in fields:
        ca = _ca(line("CA"), "CA", fields["CA"][1])
    refs_line, refs = fields.get("References", (0, ""))
    return NarInfo(
        store_path=_path(line("StorePath"), "StorePath", fields["StorePath"][1], absolute=True),
        url=fields["URL"][1],
        compression=fields.get("Compression", (0, "bzip2"))[1],
        file_hash=file_hash,
        file_size=file_size,
        nar_hash=nar_hash,
        nar_size=nar_size,
        references=tuple(_path(refs_line, "References", r) for r in refs.split(" ") if refs),
        deriver=deriver,
        system=system,
        signatures=sigs,
        ca=ca,
    )
