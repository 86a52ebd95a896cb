"""The ATerm syntax of ``.drv`` files, at the level of raw byte strings.

A derivation file is::

    Derive([("out","/nix/store/…","r:sha256","<hex>"),…],   outputs
           [("/nix/store/….drv",["out",…]),…],              input derivations
           ["/nix/store/…",…],                              input sources
           "x86_64-linux", "/bin/sh", ["-c","…"],           system, builder, args
           [("key","value"),…])                              environment

Nix 2.8 writes two kinds of strings: *escaped* ones (builder, arguments,
environment keys and values) where ``" \\ \\n \\r \\t`` become ``\\" \\\\ \\n \\r
\\t`` and every other byte is written as is; and *unescaped* ones (output
names, paths, hash algorithms and hashes, input paths, system) written
verbatim between quotes.

:func:`parse` is strict: it accepts exactly what :func:`write` produces, so
``write(parse(b)) == b`` for every accepted ``b``.  In particular it rejects
escapes other than the five above, raw newline/CR/tab inside escaped strings,
any backslash inside unescaped strings, whitespace, unsorted or duplicate
keys (outputs, input derivations, their output names, input sources,
environment), and trailing bytes.  Nix itself is laxer, but never writes
such files.  Errors are :class:`ATermError` with the byte offset.
"""

from __future__ import annotations

import codecs
import itertools
import re
from typing import NamedTuple, NoReturn

from nixcompat.errors import NixCompatError

__all__ = ["ATermError", "InvalidDerivation", "RawDerive", "escape", "parse", "write"]


class InvalidDerivation(NixCompatError):
    """A derivation that is malformed or violates Nix's rules."""


class ATermError(InvalidDerivation):
    """A syntax error in a ``.drv`` file; ``offset`` is the byte offset of the problem."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"invalid derivation ATerm at byte {offset}: {message}")
        self.offset = offset


class RawDerive(NamedTuple):
    """The fields of a ``Derive(...)`` term as byte strings, in file order."""

    outputs: list[tuple[bytes, bytes, bytes, bytes]]
    """``(name, path, hash_algo, hash)``, sorted by name."""
    input_derivations: list[tuple[bytes, list[bytes]]]
    """``(drv path, output names)``, sorted by path; names sorted."""
    input_sources: list[bytes]
    system: bytes
    builder: bytes
    arguments: list[bytes]
    environment: list[tuple[bytes, bytes]]
    """``(key, value)``, sorted by key."""


# A complete valid escaped string (possessive: no backtracking on failure).
_ESCAPED = re.compile(rb'"([^"\\\n\r\t]*+(?:\\["\\nrt][^"\\\n\r\t]*+)*+)"')
# A run of bytes that needs no special handling inside an escaped string.
_PLAIN = re.compile(rb'[^"\\\n\r\t]*')
# The same inside an unescaped string.
_RAW = re.compile(rb'[^"\\]*')
_ESCAPABLE = frozenset(b'nrt"\\')


def _unescape(body: bytes) -> bytes:
    """The value of a valid escaped string body (only the five escapes occur)."""
    if b"\\" not in body:
        return body
    # Python's bytes-literal unescaping agrees with Nix's on \" \\ \n \r \t,
    # and the regexes let no other escape through.
    return codecs.escape_decode(body)[0]


def _show(value: bytes) -> str:
    """``value`` for an error message: as text when it is UTF-8."""
    try:
        return repr(value.decode())
    except UnicodeDecodeError:
        return repr(value)


class _Reader:
    """A cursor over the bytes of a ``.drv`` file."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fail(self, message: str, offset: int | None = None) -> ATermError:
        return ATermError(message, self.pos if offset is None else offset)

    def describe_here(self) -> str:
        chunk = self.data[self.pos : self.pos + 12]
        return f"{chunk!r}" if chunk else "end of input"

    def expect(self, literal: bytes) -> None:
        if not self.data.startswith(literal, self.pos):
            raise self.fail(f"expected {literal.decode()!r}, found {self.describe_here()}")
        self.pos += len(literal)

    def accept(self, literal: bytes) -> bool:
        if self.data.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def escaped(self, what: str) -> bytes:
        """An escaped string (``printString``)."""
        m = _ESCAPED.match(self.data, self.pos)
        if m is None:
            self.escaped_error(what)
        self.pos = m.end()
        return _unescape(m.group(1))

    def escaped_error(self, what: str) -> NoReturn:
        """Raise the error explaining why no valid escaped string starts here."""
        data = self.data
        start = self.pos
        self.expect(b'"')
        pos = self.pos
        while True:
            end = _PLAIN.match(data, pos).end()  # type: ignore[union-attr]
            if end >= len(data) or (data[end] == 0x5C and end + 1 >= len(data)):
                raise self.fail(f"unterminated string in {what}", start)
            c = data[end]
            if c == 0x22:  # pragma: no cover - then _ESCAPED would have matched
                raise self.fail(f"malformed string in {what}", start)
            if c != 0x5C:  # raw \n \r \t
                raise self.fail(
                    f"raw control byte {bytes([c])!r} in {what} (Nix writes it escaped)", end
                )
            if data[end + 1] not in _ESCAPABLE:
                raise self.fail(
                    f"bad escape {_show(data[end : end + 2])} in {what} "
                    '(only \\" \\\\ \\n \\r \\t are valid)',
                    end,
                )
            pos = end + 2

    def raw(self, what: str) -> bytes:
        """An unescaped string (``printUnquotedString``)."""
        data = self.data
        start = self.pos
        self.expect(b'"')
        end = _RAW.match(data, self.pos).end()  # type: ignore[union-attr]
        if end >= len(data):
            raise self.fail(f"unterminated string in {what}", start)
        if data[end] != 0x22:
            raise self.fail(f"backslash in {what}, which Nix writes unescaped", end)
        value = data[self.pos : end]
        self.pos = end + 1
        return value

    def raw_list(self, what: str) -> list[bytes]:
        """``[...]`` of unescaped strings, strictly increasing."""
        self.expect(b"[")
        items: list[bytes] = []
        if self.accept(b"]"):
            return items
        while True:
            offset = self.pos
            item = self.raw(what)
            if items and item <= items[-1]:
                problem = "duplicate" if item == items[-1] else "unsorted"
                raise self.fail(f"{problem} {what} {_show(item)}", offset)
            items.append(item)
            if self.accept(b"]"):
                return items
            self.expect(b",")


def _check_order(
    reader: _Reader, what: str, previous: bytes | None, key: bytes, offset: int
) -> None:
    if previous is not None and key <= previous:
        problem = "duplicate" if key == previous else "unsorted"
        raise reader.fail(f"{problem} {what} {_show(key)}", offset)


def parse(data: bytes) -> RawDerive:
    """Parse a complete ``.drv`` file strictly (see the module docstring)."""
    data = bytes(data)
    return _parse_fast(data) or _parse_checked(data)


def _parse_checked(data: bytes) -> RawDerive:
    """The reference parser: token by token, with precise errors."""
    r = _Reader(data)
    r.expect(b"Derive([")

    outputs: list[tuple[bytes, bytes, bytes, bytes]] = []
    if not r.accept(b"]"):
        while True:
            r.expect(b"(")
            offset = r.pos
            name = r.raw("output name")
            _check_order(r, "output name", outputs[-1][0] if outputs else None, name, offset)
            r.expect(b",")
            path = r.raw("output path")
            r.expect(b",")
            algo = r.raw("output hash algorithm")
            r.expect(b",")
            digest = r.raw("output hash")
            r.expect(b")")
            outputs.append((name, path, algo, digest))
            if r.accept(b"]"):
                break
            r.expect(b",")

    r.expect(b",[")
    input_drvs: list[tuple[bytes, list[bytes]]] = []
    if not r.accept(b"]"):
        while True:
            r.expect(b"(")
            offset = r.pos
            path = r.raw("input derivation path")
            previous = input_drvs[-1][0] if input_drvs else None
            _check_order(r, "input derivation", previous, path, offset)
            r.expect(b",")
            input_drvs.append((path, r.raw_list("input derivation output name")))
            r.expect(b")")
            if r.accept(b"]"):
                break
            r.expect(b",")

    r.expect(b",")
    input_srcs = r.raw_list("input source")
    r.expect(b",")
    system = r.raw("system")
    r.expect(b",")
    builder = r.escaped("builder")
    r.expect(b",[")
    args: list[bytes] = []
    if not r.accept(b"]"):
        while True:
            args.append(r.escaped("argument"))
            if r.accept(b"]"):
                break
            r.expect(b",")

    r.expect(b",[")
    env: list[tuple[bytes, bytes]] = []
    if not r.accept(b"]"):
        while True:
            r.expect(b"(")
            offset = r.pos
            key = r.escaped("environment key")
            _check_order(r, "env key", env[-1][0] if env else None, key, offset)
            r.expect(b",")
            env.append((key, r.escaped(f"environment value of {_show(key)}")))
            r.expect(b")")
            if r.accept(b"]"):
                break
            r.expect(b",")
    r.expect(b")")
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} trailing bytes after the closing paren")
    return RawDerive(outputs, input_drvs, input_srcs, system, builder, args, env)


# The fast path: one regex per list element.  It returns None on anything
# unusual, and then _parse_checked either accepts the input too or says why not.
_S = _ESCAPED.pattern
_R = rb'"([^"\\]*+)"'
_RS = rb'((?:"[^"\\]*+"(?:,"[^"\\]*+")*+)?)'
_OUTPUT = re.compile(rb"\(" + _R + b"," + _R + b"," + _R + b"," + _R + rb"\)([,\]])")
_INPUT_DRV = re.compile(rb"\(" + _R + rb",\[" + _RS + rb"\]\)([,\]])")
_SOURCES_SYSTEM_BUILDER = re.compile(rb"\[" + _RS + rb"\]," + _R + b"," + _S + rb",\[")
_ARG = re.compile(_S + rb"([,\]])")
_ENV = re.compile(rb"\(" + _S + b"," + _S + rb"\)([,\]])")


def _split(items: bytes) -> list[bytes]:
    return items[1:-1].split(b'","') if items else []


def _increasing(items: list[bytes]) -> bool:
    return all(a < b for a, b in itertools.pairwise(items))


def _parse_fast(data: bytes) -> RawDerive | None:
    if not data.startswith(b"Derive(["):
        return None
    pos = 8
    outputs: list[tuple[bytes, bytes, bytes, bytes]] = []
    sep = b"]" if data.startswith(b"]", pos) else b","
    pos += sep == b"]"
    while sep == b",":
        m = _OUTPUT.match(data, pos)
        if m is None:
            return None
        name, path, algo, digest, sep = m.groups()
        outputs.append((name, path, algo, digest))
        pos = m.end()
    if not data.startswith(b",[", pos):
        return None
    pos += 2
    inputs: list[tuple[bytes, list[bytes]]] = []
    sep = b"]" if data.startswith(b"]", pos) else b","
    pos += sep == b"]"
    while sep == b",":
        m = _INPUT_DRV.match(data, pos)
        if m is None:
            return None
        path, names, sep = m.groups()
        inputs.append((path, _split(names)))
        pos = m.end()
    if not data.startswith(b",", pos):
        return None
    m = _SOURCES_SYSTEM_BUILDER.match(data, pos + 1)
    if m is None:
        return None
    sources, system, builder = _split(m.group(1)), m.group(2), _unescape(m.group(3))
    pos = m.end()
    args: list[bytes] = []
    sep = b"]" if data.startswith(b"]", pos) else b","
    pos += sep == b"]"
    while sep == b",":
        m = _ARG.match(data, pos)
        if m is None:
            return None
        args.append(_unescape(m.group(1)))
        sep = m.group(2)
        pos = m.end()
    if not data.startswith(b",[", pos):
        return None
    pos += 2
    env: list[tuple[bytes, bytes]] = []
    sep = b"]" if data.startswith(b"]", pos) else b","
    pos += sep == b"]"
    while sep == b",":
        m = _ENV.match(data, pos)
        if m is None:
            return None
        env.append((_unescape(m.group(1)), _unescape(m.group(2))))
        sep = m.group(3)
        pos = m.end()
    if pos != len(data) - 1 or not data.endswith(b")"):
        return None
    ordered = (
        _increasing([o[0] for o in outputs])
        and _increasing([i[0] for i in inputs])
        and all(_increasing(names) for _, names in inputs)
        and _increasing(sources)
        and _increasing([k for k, _ in env])
    )
    if not ordered:
        return None
    return RawDerive(outputs, inputs, sources, system, builder, args, env)


_NEEDS_ESCAPE = re.compile(rb'["\\\n\r\t]')


def escape(s: bytes) -> bytes:
    """``s`` as an escaped ATerm string, quotes included (Nix's ``printString``)."""
    if _NEEDS_ESCAPE.search(s) is None:
        return b'"' + s + b'"'
    s = s.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    s = s.replace(b"\n", b"\\n").replace(b"\r", b"\\r").replace(b"\t", b"\\t")
    return b'"' + s + b'"'


def _raw(s: bytes) -> bytes:
    return b'"' + s + b'"'


def _raw_list(items: list[bytes]) -> bytes:
    return b"[" + b",".join(b'"' + s + b'"' for s in items) + b"]"


def write(d: RawDerive) -> bytes:
    """Serialise ``d`` as Nix does, in the given order (callers sort)."""
    parts = [b"Derive(["]
    parts.append(
        b",".join(
            b"(" + _raw(n) + b"," + _raw(p) + b"," + _raw(a) + b"," + _raw(h) + b")"
            for n, p, a, h in d.outputs
        )
    )
    parts.append(b"],[")
    parts.append(
        b",".join(b"(" + _raw(p) + b"," + _raw_list(outs) + b")" for p, outs in d.input_derivations)
    )
    parts.append(b"],")
    parts.append(_raw_list(d.input_sources))
    parts.append(b",")
    parts.append(_raw(d.system))
    parts.append(b",")
    parts.append(escape(d.builder))
    parts.append(b",[")
    parts.append(b",".join(escape(a) for a in d.arguments))
    parts.append(b"],[")
    parts.append(b",".join(b"(" + escape(k) + b"," + escape(v) + b")" for k, v in d.environment))
    parts.append(b"])")
    return b"".join(parts)
