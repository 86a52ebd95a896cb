"""Derivations: ATerm parsing/printing, validation, hash modulo and output paths.

Expected values come from derivations_upstream.json (each .drv re-created by
Nix 2.8); test_derivation_nix.py checks against a live Nix as well.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcompat import aterm
from nixcompat.derivation import (
    ATermError,
    Derivation,
    InvalidDerivation,
    Output,
    calculate_output_paths,
    hash_derivation_modulo,
    hash_modulo_with,
)
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.storepath import StorePath, make_text_path
from tests.vectors import entries

VALID = entries("derivations_upstream", valid=True)
INVALID = entries("derivations_upstream", valid=False)
BY_PATH = {e["drv_path"]: e for e in VALID}


def _bytes(entry: dict[str, Any]) -> bytes:
    return base64.b64decode(entry["aterm_b64"])


def _load(path: str) -> Derivation:
    return Derivation.from_aterm(_bytes(BY_PATH[path]))


def blanked(drv: Derivation) -> Derivation:
    """``drv`` as the evaluator has it before computing output paths."""
    return dataclasses.replace(
        drv,
        outputs={n: o.with_path("") for n, o in drv.outputs.items()},
        environment={k: b"" if k in drv.outputs else v for k, v in drv.environment.items()},
    )


@pytest.mark.parametrize("entry", VALID, ids=[e["file"] for e in VALID])
def test_vector_round_trip_and_paths(entry: dict[str, Any]) -> None:
    data = _bytes(entry)
    drv = Derivation.from_aterm(data)
    assert drv.to_aterm() == data
    drv.validate()
    assert drv.name == entry["name"]
    assert drv.drv_path().absolute == entry["drv_path"]
    assert {n: o.path for n, o in drv.outputs.items()} == entry["outputs"]
    assert drv.is_fixed_output() is entry["is_fixed_output"]
    assert list(drv.input_derivations) == entry["input_drvs"]


SHOWN = [e for e in VALID if e["show_derivation"] is not None]


@pytest.mark.parametrize("entry", SHOWN, ids=[e["file"] for e in SHOWN])
def test_vector_matches_show_derivation(entry: dict[str, Any]) -> None:
    drv = Derivation.from_aterm(_bytes(entry))
    shown = entry["show_derivation"]
    assert shown["system"] == drv.system
    assert shown["builder"] == drv.builder
    assert shown["inputSrcs"] == list(drv.input_sources)
    assert shown["inputDrvs"] == {p: list(o) for p, o in drv.input_derivations.items()}
    assert [a.decode() for a in drv.arguments] == shown["args"]
    assert list(shown["env"]) == list(drv.environment)
    assert shown["env"] == {k: v.decode() for k, v in drv.environment.items()}
    for name, out in drv.outputs.items():
        expected = {"path": out.path}
        if out.is_fixed:
            expected |= {"hashAlgo": out.hash_algo, "hash": out.hash}
        assert shown["outputs"][name] == expected


def test_non_utf8_env_survives() -> None:
    drv = _load("/nix/store/x6p0hg79i3wg0kkv7699935f7rrj9jf3-latin1.drv")
    assert drv.environment["chars"] == bytes.fromhex("c5c4d6")


@pytest.mark.parametrize("entry", VALID, ids=[e["file"] for e in VALID])
def test_vector_hash_modulo(entry: dict[str, Any]) -> None:
    drv = Derivation.from_aterm(_bytes(entry))
    cache: dict[str, bytes] = {}
    assert hash_modulo_with(drv, _load, cache).hex() == entry["hash_derivation_modulo_hex"]
    assert set(cache) == set(drv.input_derivations)
    if entry["upstream_hash_derivation_modulo_hex"] is not None:
        assert entry["upstream_hash_derivation_modulo_hex"] == entry["hash_derivation_modulo_hex"]
    masked = entry["masked_hash_derivation_modulo_hex"]
    if masked is not None:
        assert hash_modulo_with(drv, _load, cache, mask_outputs=True).hex() == masked
        # masking makes the hash independent of whether the paths are filled in
        assert hash_derivation_modulo(blanked(drv), cache.__getitem__, True).hex() == masked


@pytest.mark.parametrize("entry", VALID, ids=[e["file"] for e in VALID])
def test_vector_calculate_output_paths(entry: dict[str, Any]) -> None:
    drv = Derivation.from_aterm(_bytes(entry))
    blank = blanked(drv)
    blank.validate(require_output_paths=False)
    with pytest.raises(InvalidDerivation):
        blank.validate()
    cache: dict[str, bytes] = {}
    hash_modulo_with(drv, _load, cache)
    assert calculate_output_paths(blank, cache.__getitem__) == drv
    assert calculate_output_paths(drv, cache.__getitem__) == drv


@pytest.mark.parametrize("entry", INVALID, ids=[e["file"] for e in INVALID])
def test_invalid_vector(entry: dict[str, Any]) -> None:
    with pytest.raises(ATermError) as info:
        Derivation.from_aterm(_bytes(entry))
    assert "at byte" in str(info.value)


def test_duplicate_env_key_names_key_and_offset() -> None:
    (entry,) = [e for e in INVALID if e["file"] == "duplicate.drv"]
    data = _bytes(entry)
    with pytest.raises(ATermError, match="duplicate env key 'name'") as info:
        Derivation.from_aterm(data)
    assert data[info.value.offset :].startswith(b'"name","bar"')


FOO = _bytes(BY_PATH["/nix/store/4wvvbi4jwn0prsdxb7vs673qa5h9gr7x-foo.drv"])
MULTI = _bytes(BY_PATH["/nix/store/h32dahq0bx5rp1krcdx3a53asj21jvhk-has-multi-out.drv"])


def _edit(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) >= 1, old
    return data.replace(old, new, 1)


@pytest.mark.parametrize(
    ("data", "fragment", "at"),
    [
        (b"", "expected 'Derive(['", 0),
        (b"Derive", "expected 'Derive(['", 0),
        (FOO[:-1], "expected ')'", len(FOO) - 1),
        (FOO[:100], "unterminated string", None),
        (FOO + b"\n", "1 trailing bytes", len(FOO)),
        (_edit(FOO, b'("name","foo")', b'("name","f\\oo")'), "bad escape", None),
        (_edit(FOO, b'("name","foo")', b'("name","f\noo")'), "raw control byte", None),
        (FOO[: FOO.index(b'"name","foo"') + 10] + b"\\", "unterminated string", None),
        (_edit(FOO, b'":",":"', b'"\\:",":"'), "backslash in system", None),
        (_edit(FOO, b'("bar",', b'("zzz",'), "unsorted env key 'builder'", None),
        (_edit(FOO, b'"")],[(', b'""),"x"],[('), "expected '('", None),
        (_edit(FOO, b'["out"]', b'["out","out"]'), "duplicate input derivation output name", None),
        (_edit(MULTI, b'("lib",', b'("pib",'), "unsorted output name 'out'", None),
        (_edit(FOO, b"Derive([(", b"Derive([ ("), "expected '('", 8),
        (
            _edit(FOO, b'[],":"', b'["/nix/store/b","/nix/store/a"],":"'),
            "unsorted input source",
            None,
        ),
    ],
)
def test_syntax_errors(data: bytes, fragment: str, at: int | None) -> None:
    with pytest.raises(ATermError) as info:
        Derivation.from_aterm(data)
    assert fragment in str(info.value)
    assert 0 <= info.value.offset <= len(data)
    if at is not None:
        assert info.value.offset == at


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        (
            b'"/nix/store/0hm2f1psjpcwg8fijsmr4wwxrx59s092-bar.drv"',
            b'"/tmp/bar.drv"',
            "input derivation",
        ),
        (
            b'"/nix/store/5vyvcwah9l9kf07d52rcgdk70g2f4y13-foo",""',
            b'"/nix/store/5vyvcwah9l9kf07d52rcgdk70g2f4y1e-foo",""',
            "output path",
        ),
    ],
)
def test_paths_must_be_store_paths(old: bytes, new: bytes, fragment: str) -> None:
    with pytest.raises(InvalidDerivation, match=fragment):
        Derivation.from_aterm(_edit(FOO, old, new))


def _simple(**changes: Any) -> Derivation:
    base = Derivation(
        outputs={"out": Output("")},
        input_derivations={},
        input_sources=(),
        system="x86_64-linux",
        builder="/bin/sh",
        arguments=(b"-c", b"echo"),
        environment={"name": b"simple", "out": b""},
    )
    return dataclasses.replace(base, **changes)


SHA256 = NixHash.compute(HashAlgo.sha256, b"x")


@pytest.mark.parametrize(
    ("drv", "fragment"),
    [
        (_simple(outputs={}), "at least one output"),
        (_simple(outputs={"drv": Output("")}), "output name 'drv'"),
        (_simple(outputs={"a b": Output("")}), "invalid output name 'a b'"),
        (_simple(builder=""), "'builder' missing"),
        (_simple(system=""), "'system' missing"),
        (_simple(environment={}), "has no 'name'"),
        (_simple(environment={"name": b"a b"}), "invalid derivation name 'a b'"),
        (
            _simple(outputs={"out": Output.fixed(SHA256, True), "dev": Output("")}),
            "exactly one output 'out'",
        ),
        (_simple(outputs={"lib": Output.fixed(SHA256, True)}), "exactly one output 'out'"),
        (_simple(outputs={"out": Output("", "r:sha384", "00")}), "unknown hash algorithm"),
        (_simple(outputs={"out": Output("", "sha256", "00")}), "bad fixed output hash"),
        (_simple(outputs={"out": Output("", "sha256", SHA256.to_hex().upper())}), "lower-case"),
        (_simple(outputs={"out": Output("", "sha256", "")}), "floating content-addressed"),
        (_simple(input_derivations={"/nix/store/foo.drv": ("out",)}), "not a .drv store path"),
        (_simple(input_sources=("/tmp/x",)), "input source '/tmp/x'"),
    ],
)
def test_validate(drv: Derivation, fragment: str) -> None:
    with pytest.raises(InvalidDerivation, match="invalid derivation") as info:
        drv.validate(require_output_paths=False)
    assert fragment in str(info.value)


NO_INPUTS: dict[str, bytes] = {}


def test_validate_checks_filled_paths() -> None:
    drv = calculate_output_paths(_simple(), NO_INPUTS.__getitem__)
    drv.validate()
    wrong_env = dataclasses.replace(drv, environment={**drv.environment, "out": b"/nix/store/x"})
    with pytest.raises(InvalidDerivation, match="environment variable 'out'"):
        wrong_env.validate()
    other = calculate_output_paths(
        _simple(environment={"name": b"other", "out": b""}), NO_INPUTS.__getitem__
    )
    misnamed = dataclasses.replace(drv, outputs=other.outputs)
    with pytest.raises(InvalidDerivation, match="is not named 'simple'"):
        misnamed.validate()
    fixed = calculate_output_paths(
        _simple(outputs={"out": Output.fixed(SHA256, False)}), NO_INPUTS.__getitem__
    )
    fixed.validate()
    wrong = dataclasses.replace(
        fixed,
        outputs={"out": dataclasses.replace(fixed.outputs["out"], path=drv.outputs["out"].path)},
    )
    with pytest.raises(InvalidDerivation, match="fixed output path"):
        wrong.validate()


def test_unwritable_strings_are_rejected() -> None:
    for bad in ('a"b', "a\\b"):
        with pytest.raises(InvalidDerivation, match="unescaped"):
            _simple(system=bad)
        with pytest.raises(InvalidDerivation, match="unescaped"):
            _simple(outputs={bad: Output("")})
    with pytest.raises(InvalidDerivation, match="not encodable"):
        _simple(builder="\ud800")


def test_construction_sorts() -> None:
    drv = _simple(
        environment={"z": b"1", "a": b"2", "name": b"simple", "out": b""},
        input_sources=("/nix/store/b", "/nix/store/a", "/nix/store/a"),
        input_derivations={"/nix/store/y.drv": ("out", "dev", "out"), "/nix/store/x.drv": ("a",)},
    )
    assert list(drv.environment) == ["a", "name", "out", "z"]
    assert drv.input_sources == ("/nix/store/a", "/nix/store/b")
    assert drv.input_derivations == {"/nix/store/x.drv": ("a",), "/nix/store/y.drv": ("dev", "out")}
    assert list(drv.input_derivations) == ["/nix/store/x.drv", "/nix/store/y.drv"]


def test_env_sorted_by_bytes_not_code_points() -> None:
    # U+D7FF encodes as ED 9F BF, the escaped byte 0x80 as 80: bytes order puts 0x80 first
    keys = ["\ud7ff", b"\x80".decode("utf-8", "surrogateescape")]
    drv = _simple(environment={k: b"" for k in keys} | {"name": b"simple"})
    assert list(drv.environment) == ["name", keys[1], keys[0]]
    assert Derivation.from_aterm(drv.to_aterm()) == drv


def test_structured_attrs_name_and_round_trip() -> None:
    entry = BY_PATH["/nix/store/9lj1lkjm2ag622mh4h9rpy6j607an8g2-structured-attrs.drv"]
    drv = Derivation.from_aterm(_bytes(entry))
    assert "name" not in drv.environment
    assert drv.name == "structured-attrs"
    assert drv.structured_attrs is not None
    assert json.loads(drv.structured_attrs)["system"] == ":"
    for bad in (b"[1]", b"\xff", b"[" * 100_000):
        with pytest.raises(InvalidDerivation, match="__json"):
            _ = _simple(environment={"__json": bad}).name


def test_drv_path_references() -> None:
    drv = _load("/nix/store/4wvvbi4jwn0prsdxb7vs673qa5h9gr7x-foo.drv")
    assert drv.references() == ["/nix/store/0hm2f1psjpcwg8fijsmr4wwxrx59s092-bar.drv"]
    assert drv.drv_path() == make_text_path("foo.drv", drv.to_aterm(), drv.references())


def test_hash_modulo_with_deep_chain_and_cycle() -> None:
    # a chain far deeper than Python's recursion limit
    graph: dict[str, Derivation] = {}
    previous: str | None = None
    cache: dict[str, bytes] = {}
    for i in range(3000):
        inputs = {previous: ("out",)} if previous else {}
        drv = calculate_output_paths(
            _simple(input_derivations=inputs, environment={"name": f"n{i}".encode(), "out": b""}),
            cache.__getitem__,
        )
        path = drv.drv_path().absolute
        graph[path] = drv
        cache[path] = hash_derivation_modulo(drv, cache.__getitem__)
        previous = path
    assert previous is not None
    fresh: dict[str, bytes] = {}
    top = graph[previous]
    assert hash_modulo_with(top, graph.__getitem__, fresh) == cache[previous]
    assert fresh == {p: h for p, h in cache.items() if p != previous}

    a, b = "/nix/store/" + "a" * 32 + "-a.drv", "/nix/store/" + "b" * 32 + "-b.drv"
    cyclic = {
        a: _simple(input_derivations={b: ("out",)}),
        b: _simple(input_derivations={a: ("out",)}),
    }
    with pytest.raises(InvalidDerivation, match="cycle"):
        hash_modulo_with(cyclic[a], cyclic.__getitem__, {})


# --- property tests -------------------------------------------------------------------------

_NAME = st.text("abcdefxyz0123456789+-._?=", min_size=1, max_size=12)
_PATH = st.builds(
    lambda h, n: f"/nix/store/{h}-{n}",
    st.text("0123456789abcdfghijklmnpqrsvwxyz", min_size=32, max_size=32),
    _NAME,
)
_TEXT = st.text(st.characters(exclude_characters='"\\', exclude_categories=["Cs"]), max_size=20)
_KEY = st.one_of(
    st.text(max_size=10), st.binary(max_size=10).map(lambda b: b.decode("utf-8", "surrogateescape"))
)


@st.composite
def derivations(draw: st.DrawFn) -> Derivation:
    outputs: dict[str, Output]
    if draw(st.booleans()):
        algo = draw(st.sampled_from(list(HashAlgo)))
        digest = NixHash(
            algo, draw(st.binary(min_size=algo.digest_size, max_size=algo.digest_size))
        )
        outputs = {
            "out": Output.fixed(
                digest,
                draw(st.booleans()),
                draw(st.sampled_from(["", *draw(st.lists(_PATH, max_size=1))])),
            )
        }
    else:
        outputs = draw(
            st.dictionaries(_NAME, st.builds(Output, st.one_of(st.just(""), _PATH)), max_size=4)
        )
    return Derivation(
        outputs=outputs,
        input_derivations=draw(
            st.dictionaries(_PATH, st.lists(_NAME, max_size=3).map(tuple), max_size=3)
        ),
        input_sources=tuple(draw(st.lists(_PATH, max_size=3))),
        system=draw(_TEXT),
        builder=draw(st.text(max_size=20)),
        arguments=tuple(draw(st.lists(st.binary(max_size=20), max_size=4))),
        environment=draw(st.dictionaries(_KEY, st.binary(max_size=30), max_size=6)),
    )


@given(derivations())
@settings(max_examples=150, deadline=None)
def test_aterm_round_trip(drv: Derivation) -> None:
    data = drv.to_aterm()
    parsed = Derivation.from_aterm(data)
    assert parsed == drv
    assert parsed.to_aterm() == data


@given(st.binary(max_size=40), st.binary(max_size=40))
@settings(max_examples=200)
def test_escaping_round_trips_any_bytes(value: bytes, key: bytes) -> None:
    raw = aterm.parse(FOO)
    edited = raw._replace(environment=sorted([*raw.environment, (b"\xff" + key, value)]))
    data = aterm.write(edited)
    assert aterm.parse(data) == edited
    assert (
        Derivation.from_aterm(data).environment[(b"\xff" + key).decode("utf-8", "surrogateescape")]
        == value
    )


def test_store_path_type_for_references() -> None:
    drv = _load("/nix/store/4wvvbi4jwn0prsdxb7vs673qa5h9gr7x-foo.drv")
    assert isinstance(drv.drv_path(), StorePath)


SEEDS = [_bytes(e) for e in VALID]


@given(
    st.sampled_from(SEEDS),
    st.integers(min_value=0, max_value=2000),
    st.binary(max_size=6),
    st.integers(min_value=0, max_value=6),
)
@settings(max_examples=400, deadline=None)
def test_edited_aterm_is_rejected_or_canonical(
    seed: bytes, offset: int, insert: bytes, delete: int
) -> None:
    offset %= len(seed) + 1
    data = seed[:offset] + insert + seed[offset + delete :]
    fast = aterm._parse_fast(data)
    error: ATermError | None = None
    try:
        checked = aterm._parse_checked(data)
    except ATermError as exc:
        error = exc
    if error is not None:
        assert fast is None
        assert 0 <= error.offset <= len(data)
    else:
        assert fast is None or fast == checked
        assert aterm.write(checked) == data
