"""Derivations: the ``.drv`` model, its ATerm form, hash modulo and output paths.

Representation (chosen so that every ``.drv`` round-trips byte for byte):

- ``environment`` values and ``arguments`` are ``bytes`` (they may hold any
  bytes, e.g. latin-1 text);
- every other string field is a ``str``; bytes that are not UTF-8 are
  carried as lone surrogates (``errors="surrogateescape"``), so
  ``s.encode("utf-8", "surrogateescape")`` gives back the exact bytes;
- mappings are kept sorted as Nix sorts them (by the bytes of the key), and
  input sources and input derivation output names are sorted tuples.

``Derivation.from_aterm`` accepts exactly what ``to_aterm`` writes (see
:mod:`nixcompat.aterm`) and checks that every path is a syntactically valid
store path; ``validate`` applies Nix's semantic rules on top.

Hash modulo (Nix's ``hashDerivationModulo``): a fixed-output derivation hashes
to ``sha256("fixed:out:<[r:]algo>:<hex>:<out path>")``; any other derivation
hashes to the sha256 of its ATerm in which every input derivation path is
replaced by the hex of *that* input's hash modulo.  With ``mask_outputs`` the
output paths (and the environment variables named after outputs) are blanked;
that is the hash an input-addressed derivation's own output paths come from.
What a dependant substitutes is the *unmasked* hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field, replace

from nixcompat import aterm
from nixcompat.aterm import ATermError, InvalidDerivation
from nixcompat.hash import HashAlgo, InvalidHash, NixHash
from nixcompat.storepath import (
    InvalidStorePath,
    StorePath,
    is_absolute_store_path,
    is_valid_name,
    make_fixed_output_path,
    make_output_path,
    make_text_path,
    output_path_name,
)

__all__ = [
    "ATermError",
    "Derivation",
    "InvalidDerivation",
    "Output",
    "calculate_output_paths",
    "hash_derivation_modulo",
    "hash_modulo_with",
]


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _check_unescaped(value: str, what: str) -> None:
    if not isinstance(value, str):
        raise InvalidDerivation(f"{what} {value!r} must be a str")
    try:
        _enc(value)
    except UnicodeEncodeError as exc:
        raise InvalidDerivation(f"{what} {value!r} is not encodable: {exc}") from exc
    if '"' in value or "\\" in value:
        raise InvalidDerivation(
            f"{what} {value!r} contains '\"' or '\\\\', which Nix writes unescaped "
            "(the .drv would be unreadable)"
        )


@dataclass(frozen=True)
class Output:
    """One output: its path (``""`` before it is computed) and, when fixed, its hash.

    ``hash_algo`` is ``""`` or ``[r:]<algo>`` (``r:`` = recursive/NAR hashing);
    ``hash`` is ``""`` or the lower-case hex digest, exactly as in the ATerm.
    """

    path: str
    hash_algo: str = ""
    hash: str = ""

    def __post_init__(self) -> None:
        _check_unescaped(self.path, "output path")
        _check_unescaped(self.hash_algo, "output hash algorithm")
        _check_unescaped(self.hash, "output hash")

    @classmethod
    def fixed(cls, hash: NixHash, recursive: bool, path: str = "") -> Output:
        """A fixed output with content hash ``hash``."""
        return cls(path, ("r:" if recursive else "") + hash.algo.value, hash.to_hex())

    @property
    def is_fixed(self) -> bool:
        """Whether this output has a fixed content hash."""
        return self.hash != ""

    @property
    def recursive(self) -> bool:
        """Whether the content hash is of the NAR (``r:``) rather than the flat file."""
        return self.hash_algo.startswith("r:")

    @property
    def nix_hash(self) -> NixHash | None:
        """The parsed fixed hash, ``None`` for other outputs; raises on a bad one."""
        if not self.is_fixed:
            return None
        name = self.hash_algo[2:] if self.recursive else self.hash_algo
        try:
            return NixHash.parse(self.hash, HashAlgo.parse(name))
        except InvalidHash as exc:
            raise InvalidDerivation(f"bad fixed output hash: {exc}") from exc

    def with_path(self, path: str) -> Output:
        """This output with ``path`` filled in."""
        return replace(self, path=path)


@dataclass(frozen=True)
class Derivation:
    """A derivation.  Construction sorts the mappings; see the module docstring.

    Not hashable (it holds dicts); compare with ``==``.
    """

    outputs: dict[str, Output]
    input_derivations: dict[str, tuple[str, ...]]
    input_sources: tuple[str, ...]
    system: str
    builder: str
    arguments: tuple[bytes, ...]
    environment: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            outputs = dict(sorted(self.outputs.items(), key=lambda kv: _enc(kv[0])))
            env = dict(sorted(self.environment.items(), key=lambda kv: _enc(kv[0])))
            inputs = {
                path: tuple(sorted(set(names), key=_enc))
                for path, names in sorted(
                    self.input_derivations.items(), key=lambda kv: _enc(kv[0])
                )
            }
            sources = tuple(sorted(set(self.input_sources), key=_enc))
            _enc(self.builder)
            _enc(self.system)
        except UnicodeEncodeError as exc:
            raise InvalidDerivation(f"a derivation string is not encodable: {exc}") from exc
        for name, out in outputs.items():
            _check_unescaped(name, "output name")
            if not isinstance(out, Output):
                raise InvalidDerivation(f"output {name!r} must be an Output, not {out!r}")
        for path, names in inputs.items():
            _check_unescaped(path, "input derivation path")
            for name in names:
                _check_unescaped(name, "input derivation output name")
        for src in sources:
            _check_unescaped(src, "input source")
        _check_unescaped(self.system, "system")
        arguments = tuple(self.arguments)
        for what, values in (("argument", arguments), ("environment value", env.values())):
            for value in values:
                if not isinstance(value, bytes):
                    raise InvalidDerivation(f"{what} {value!r} must be bytes")
        set_ = object.__setattr__
        set_(self, "outputs", outputs)
        set_(self, "input_derivations", inputs)
        set_(self, "input_sources", sources)
        set_(self, "arguments", arguments)
        set_(self, "environment", env)

    @classmethod
    def from_aterm(cls, data: bytes) -> Derivation:
        """Parse a ``.drv`` file (strict; raises :class:`ATermError` with the offset)."""
        raw = aterm.parse(data)
        for _, path, _, _ in raw.outputs:
            if path and not is_absolute_store_path(_dec(path)):
                raise InvalidDerivation(f"output path {path!r} is not a valid store path")
        for path, _ in raw.input_derivations:
            if not is_absolute_store_path(_dec(path)):
                raise InvalidDerivation(f"input derivation {path!r} is not a valid store path")
        for path in raw.input_sources:
            if not is_absolute_store_path(_dec(path)):
                raise InvalidDerivation(f"input source {path!r} is not a valid store path")
        return cls(
            outputs={_dec(n): Output(_dec(p), _dec(a), _dec(h)) for n, p, a, h in raw.outputs},
            input_derivations={
                _dec(p): tuple(_dec(o) for o in outs) for p, outs in raw.input_derivations
            },
            input_sources=tuple(_dec(s) for s in raw.input_sources),
            system=_dec(raw.system),
            builder=_dec(raw.builder),
            arguments=tuple(raw.arguments),
            environment={_dec(k): v for k, v in raw.environment},
        )

    def _raw(
        self, mask_outputs: bool = False, inputs: Iterable[tuple[str, Iterable[str]]] | None = None
    ) -> aterm.RawDerive:
        outs = [
            (_enc(n), b"" if mask_outputs else _enc(o.path), _enc(o.hash_algo), _enc(o.hash))
            for n, o in self.outputs.items()
        ]
        pairs = self.input_derivations.items() if inputs is None else inputs
        env = [
            (_enc(k), b"" if mask_outputs and k in self.outputs else v)
            for k, v in self.environment.items()
        ]
        return aterm.RawDerive(
            outputs=outs,
            input_derivations=[(_enc(p), [_enc(o) for o in outs_]) for p, outs_ in pairs],
            input_sources=[_enc(s) for s in self.input_sources],
            system=_enc(self.system),
            builder=_enc(self.builder),
            arguments=list(self.arguments),
            environment=env,
        )

    def to_aterm(self) -> bytes:
        """The ``.drv`` file contents, byte-identical to what Nix writes."""
        return aterm.write(self._raw())

    @property
    def name(self) -> str:
        """The derivation name: env ``name``, or ``name`` inside ``__json`` (structured attrs)."""
        value = self.environment.get("name")
        if value is not None:
            return _dec(value)
        structured = self.environment.get("__json")
        if structured is not None:
            try:
                name = json.loads(structured).get("name")
            except (ValueError, AttributeError, RecursionError) as exc:
                raise InvalidDerivation(f"__json is not a JSON object: {exc}") from exc
            if isinstance(name, str):
                return name
        raise InvalidDerivation("the derivation has no 'name' (in env or in __json)")

    @property
    def structured_attrs(self) -> bytes | None:
        """The raw ``__json`` value when the derivation uses structured attrs."""
        return self.environment.get("__json")

    def is_fixed_output(self) -> bool:
        """Whether this is a fixed-output derivation (one fixed output ``out``)."""
        return len(self.outputs) == 1 and "out" in self.outputs and self.outputs["out"].is_fixed

    def references(self) -> list[str]:
        """The references of the ``.drv`` file: input sources and input derivation paths."""
        return sorted({*self.input_sources, *self.input_derivations})

    def drv_path(self) -> StorePath:
        """The store path of this derivation's ``.drv`` file."""
        return make_text_path(self.name + ".drv", self.to_aterm(), self.references())

    def validate(self, require_output_paths: bool = True) -> None:
        """Check Nix's rules; raises :class:`InvalidDerivation` naming the problem.

        With ``require_output_paths`` (the default) the output paths must be
        filled in, match their names, and equal the env vars named after the
        outputs; without it, they may be blank (before :func:`calculate_output_paths`).
        """
        problems = _problems(self, require_output_paths)
        if problems:
            raise InvalidDerivation("invalid derivation: " + "; ".join(problems))


def _fixed_output_path(drv: Derivation) -> StorePath:
    out = drv.outputs["out"]
    nix_hash = out.nix_hash
    assert nix_hash is not None
    try:
        return make_fixed_output_path(drv.name, nix_hash, out.recursive)
    except InvalidStorePath as exc:
        raise InvalidDerivation(f"invalid fixed-output derivation: {exc}") from exc


def hash_derivation_modulo(
    drv: Derivation, lookup: Callable[[str], bytes], mask_outputs: bool = False
) -> bytes:
    """Nix's ``hashDerivationModulo`` (32 bytes of sha256).

    ``lookup`` maps each input derivation path to that input's (unmasked)
    hash modulo; the caller memoises.  See the module docstring.
    """
    if drv.is_fixed_output():
        out = drv.outputs["out"]
        fixed_path = _fixed_output_path(drv)
        nix_hash = out.nix_hash
        assert nix_hash is not None
        fingerprint = f"fixed:out:{out.hash_algo}:{nix_hash.to_hex()}:{fixed_path}"
        return hashlib.sha256(fingerprint.encode()).digest()
    replaced: dict[str, tuple[str, ...]] = {}
    for path, outputs in drv.input_derivations.items():
        replaced[lookup(path).hex()] = outputs
    raw = drv._raw(mask_outputs, sorted(replaced.items()))
    return hashlib.sha256(aterm.write(raw)).digest()


def hash_modulo_with(
    drv: Derivation,
    lookup_drv: Callable[[str], Derivation],
    cache: MutableMapping[str, bytes],
    mask_outputs: bool = False,
) -> bytes:
    """:func:`hash_derivation_modulo`, loading inputs with ``lookup_drv``.

    ``cache`` maps drv paths to their unmasked hash modulo; it is read and
    filled, so pass the same one across calls.  Iterative (no recursion
    limit on deep graphs); a cycle raises :class:`InvalidDerivation`.
    """
    pending: dict[str, Derivation] = {}
    stack = [p for p in drv.input_derivations if p not in cache]
    while stack:
        path = stack[-1]
        if path in cache:
            stack.pop()
            continue
        current = pending.get(path)
        if current is None:
            current = pending[path] = lookup_drv(path)
        missing = [p for p in current.input_derivations if p not in cache]
        if missing:
            cycle = next((p for p in missing if p in pending), None)
            if cycle is not None:
                raise InvalidDerivation(f"derivation cycle through {cycle} and {path}")
            stack.extend(missing)
            continue
        cache[path] = hash_derivation_modulo(current, cache.__getitem__)
        del pending[path]
        stack.pop()
    return hash_derivation_modulo(drv, cache.__getitem__, mask_outputs)


def calculate_output_paths(drv: Derivation, lookup: Callable[[str], bytes]) -> Derivation:
    """``drv`` with output paths and the env vars named after outputs filled in.

    Fixed-output derivations get their content-addressed path; others get the
    input-addressed paths from the masked hash modulo (``lookup`` as for
    :func:`hash_derivation_modulo`).
    """
    name = drv.name
    if drv.is_fixed_output():
        paths = {"out": str(_fixed_output_path(drv))}
    else:
        if any(o.is_fixed for o in drv.outputs.values()):
            raise InvalidDerivation(
                f"only a single output 'out' can be fixed, not {sorted(drv.outputs)}"
            )
        modulo = hash_derivation_modulo(drv, lookup, mask_outputs=True)
        try:
            paths = {o: str(make_output_path(name, o, modulo)) for o in drv.outputs}
        except InvalidStorePath as exc:
            raise InvalidDerivation(f"invalid output path for {name!r}: {exc}") from exc
    return replace(
        drv,
        outputs={o: out.with_path(paths[o]) for o, out in drv.outputs.items()},
        environment={**drv.environment, **{o: p.encode() for o, p in paths.items()}},
    )


def _output_name_problem(name: str) -> str | None:
    if name == "drv":
        return "invalid derivation output name 'drv'"
    if not is_valid_name(name):
        return f"invalid output name {name!r} (must be a valid store path name)"
    return None


def _problems(drv: Derivation, require_paths: bool) -> list[str]:
    """Everything Nix would reject about ``drv`` (empty when it is valid)."""
    problems: list[str] = []
    try:
        name = drv.name
    except InvalidDerivation as exc:
        return [str(exc)]
    if not is_valid_name(name + ".drv"):
        problems.append(f"invalid derivation name {name!r}")
    if not drv.outputs:
        problems.append("a derivation must have at least one output")
    if not drv.builder:
        problems.append("required attribute 'builder' missing (empty)")
    if not drv.system:
        problems.append("required attribute 'system' missing (empty)")
    for o, out in drv.outputs.items():
        problem = _output_name_problem(o)
        if problem:
            problems.append(problem)
            continue
        if out.hash_algo and not out.hash:
            problems.append(
                f"output {o!r} is floating content-addressed ({out.hash_algo}), which needs "
                "the unsupported ca-derivations experimental feature"
            )
            continue
        if out.is_fixed:
            problems.extend(_fixed_problems(drv, o, out, require_paths))
            continue
        if out.path or require_paths:
            expected = output_path_name(name, o)
            if not is_absolute_store_path(out.path):
                problems.append(f"output {o!r} has invalid path {out.path!r}")
            elif StorePath.from_absolute_path(out.path).name != expected:
                problems.append(f"output {o!r} path {out.path!r} is not named {expected!r}")
        problems.extend(_env_problems(drv, o, out, require_paths))
    for path, names in drv.input_derivations.items():
        if not is_absolute_store_path(path) or not path.endswith(".drv"):
            problems.append(f"input derivation {path!r} is not a .drv store path")
        if not names:
            problems.append(f"input derivation {path!r} has no output names")
        for n in names:
            problem = _output_name_problem(n)
            if problem:
                problems.append(f"{problem} (input {path})")
    for src in drv.input_sources:
        if not is_absolute_store_path(src):
            problems.append(f"input source {src!r} is not a valid store path")
    return problems


def _fixed_problems(drv: Derivation, o: str, out: Output, require_paths: bool) -> list[str]:
    if list(drv.outputs) != ["out"]:
        return [
            f"a fixed-output derivation must have exactly one output 'out', not {list(drv.outputs)}"
        ]
    try:
        nix_hash = out.nix_hash
    except InvalidDerivation as exc:
        return [str(exc)]
    assert nix_hash is not None
    if out.hash != nix_hash.to_hex():
        return [f"fixed output hash {out.hash!r} is not lower-case hex, as Nix writes it"]
    if out.path or require_paths:
        expected = str(_fixed_output_path(drv))
        if out.path != expected:
            return [f"fixed output path {out.path!r} should be {expected!r}"]
    return _env_problems(drv, o, out, require_paths)


def _env_problems(drv: Derivation, o: str, out: Output, require_paths: bool) -> list[str]:
    value = drv.environment.get(o)
    if require_paths and value != out.path.encode():
        return [f"environment variable {o!r} is {value!r}, should be the output path {out.path!r}"]
    return []
