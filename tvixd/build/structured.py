"""Structured attrs (``__structuredAttrs = true``): the ``.attrs.json`` and ``.attrs.sh`` files.

Nix 2.8 parses the derivation's ``__json`` with nlohmann::json, adds an
``outputs`` object (output name → path), and writes the object twice into the
build directory: ``.attrs.json`` (``json.dump()``: compact, keys sorted by
bytes, non-ASCII verbatim, control characters as ``\\u00xx``, floats in
nlohmann's shortest form) and ``.attrs.sh`` (``writeStructuredAttrsShell``:
``declare`` lines a bash builder can source).  Both are reproduced here byte
for byte, including nlohmann's float format (``1e+15`` where Python writes
``1000000000000000.0``) and Nix's odd number handling in ``.attrs.sh`` (a
number counts as "simple" when its *float32* value is integral, and is then
printed as a C ``int``: 32-bit, wrapping).

``exportReferencesGraph`` needs the store's path infos at build time and is
not supported: :func:`attrs_files` rejects it.
"""

from __future__ import annotations

import json
import math
import re
import struct
from decimal import Decimal
from typing import Any

from clients.errors import InvalidRequest

__all__ = ["attrs_files", "dump_json", "shell_declarations"]

_INT64 = range(-(1 << 63), 1 << 63)
_SH_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FLOAT32_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
_INT_MIN = -(1 << 31)


def _reject_constant(name: str) -> Any:
    raise InvalidRequest(f"__json is not valid JSON: {name} is not allowed")


def parse_json(data: bytes) -> dict[str, Any]:
    """The ``__json`` object, with numbers typed as nlohmann types them."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(f"__json is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"__json must be a JSON object, got {type(value).__name__}")
    return value


def _float(x: float) -> str:
    """nlohmann's ``dump_float``: shortest digits, fixed notation for exponents -4 < n <= 15."""
    if not math.isfinite(x):
        return "null"
    if x == 0:
        return "-0.0" if math.copysign(1, x) < 0 else "0.0"
    _sign, digit_tuple, exponent = Decimal(repr(abs(x))).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)
    k, n = len(digits), len(digits) + exponent
    minus = "-" if x < 0 else ""
    if k <= n <= 15:
        return f"{minus}{digits}{'0' * (n - k)}.0"
    if 0 < n <= 15:
        return f"{minus}{digits[:n]}.{digits[n:]}"
    if -4 < n <= 0:
        return f"{minus}0.{'0' * -n}{digits}"
    mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
    e = n - 1
    return f"{minus}{mantissa}e{'-' if e < 0 else '+'}{abs(e):02d}"


def dump_json(value: Any) -> str:
    """``nlohmann::json::dump()`` of a value from :func:`parse_json`."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value) if value in _INT64 or 0 <= value < 1 << 64 else _float(float(value))
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequest(f"__json holds a string that is not UTF-8: {exc}") from exc
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(dump_json(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: kv[0].encode("utf-8", "surrogatepass"))
        return "{" + ",".join(f"{dump_json(k)}:{dump_json(v)}" for k, v in items) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def _shell_escape(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _c_int(value: int | float) -> int:
    """``json.get<int>()``: int64 wraps to 32 bits; a double truncates (INT_MIN when out of range)."""
    if isinstance(value, int):
        return (value + (1 << 31)) % (1 << 32) - (1 << 31)
    if -(1 << 31) - 1 < value < 1 << 31:
        return int(value)
    return _INT_MIN


def _as_float32(value: int | float) -> float:
    x = float(value)
    if abs(x) > _FLOAT32_MAX:
        return math.copysign(math.inf, x)
    f32: float = struct.unpack("<f", struct.pack("<f", x))[0]
    return f32


def _simple(value: Any) -> str | None:
    """``handleSimpleType`` of Nix 2.8's ``writeStructuredAttrsShell``."""
    if isinstance(value, str):
        return _shell_escape(value)
    if isinstance(value, bool):
        return "1" if value else ""
    if isinstance(value, int | float):
        f = _as_float32(value)
        if math.ceil(f) == f:
            return str(_c_int(value))
        return None
    if value is None:
        return "''"
    return None


def shell_declarations(attrs: dict[str, Any]) -> str:
    """The ``.attrs.sh`` text for ``attrs`` (Nix 2.8 ``writeStructuredAttrsShell``)."""
    out = []
    for key in sorted(attrs, key=lambda k: k.encode("utf-8", "surrogatepass")):
        if not _SH_VAR.fullmatch(key):
            continue
        value = attrs[key]
        simple = _simple(value)
        if simple is not None:
            out.append(f"declare {key}={simple}\n")
        elif isinstance(value, list):
            items = [_simple(v) for v in value]
            if all(i is not None for i in items):
                out.append(f"declare -a {key}=({''.join(f'{i} ' for i in items)})\n")
        elif isinstance(value, dict):
            pairs = sorted(value.items(), key=lambda kv: kv[0].encode("utf-8", "surrogatepass"))
            rendered = [(k, _simple(v)) for k, v in pairs]
            if all(r is not None for _, r in rendered):
                body = "".join(f"[{_shell_escape(k)}]={r} " for k, r in rendered)
                out.append(f"declare -A {key}=({body})\n")
    return "".join(out)


def attrs_files(structured: bytes, outputs: dict[str, str]) -> tuple[bytes, bytes]:
    """``(.attrs.json, .attrs.sh)`` contents for the ``__json`` value and the output paths."""
    attrs = parse_json(structured)
    if isinstance(attrs.get("exportReferencesGraph"), dict):
        raise InvalidRequest(
            "exportReferencesGraph is not supported (it needs the store's path infos at build time)"
        )
    attrs["outputs"] = dict(outputs)
    return dump_json(attrs).encode(), shell_declarations(attrs).encode()
