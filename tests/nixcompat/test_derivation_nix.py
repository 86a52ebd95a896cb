"""Differential tests against a live Nix 2.8: derivations, drv paths, output paths, store paths.

One ``nix-instantiate`` call evaluates a file producing many derivations
(multiple outputs, dependency chains, fixed outputs in every algorithm and
method, passAsFile, escapes, non-UTF-8 bytes, toFile inputs, structured
attrs); every ``.drv`` in the closure must then parse and re-serialise byte
for byte, hash to its own path, and yield the output paths Nix wrote, with
hash modulo computed by us from the input ``.drv`` files Nix wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nixcompat.derivation import Derivation, calculate_output_paths, hash_modulo_with
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.storepath import (
    StorePath,
    hash_placeholder,
    make_fixed_output_path,
    make_text_path,
)
from tests.conftest import require_tool

pytestmark = pytest.mark.nix

FOD_CONTENT = b"fixed output content\n"

# (toFile name, contents) — the second refers to the first.
TO_FILES = [("note.txt", "plain text\nwith lines\n"), ("ref.txt", "see ${note}\n")]


def _fod_attrs() -> Iterator[tuple[str, str]]:
    """``name = drv;`` lines for fixed-output derivations in every algo, method and notation."""
    for algo in HashAlgo:
        for method in ("flat", "recursive"):
            h = NixHash.compute(algo, FOD_CONTENT + algo.value.encode() + method.encode())
            for notation, value, algo_attr in (
                ("hex", h.to_hex(), f'outputHashAlgo = "{algo.value}";'),
                ("b32", h.to_nixbase32(), f'outputHashAlgo = "{algo.value}";'),
                ("sri", h.to_sri(), ""),
            ):
                name = f"fod-{algo.value}-{method}-{notation}"
                yield (
                    name,
                    f'mk {{ name = "{name}"; {algo_attr} outputHash = "{value}"; '
                    f'outputHashMode = "{method}"; }}',
                )


def _nix_str(s: str) -> str:
    """``s`` as a Nix string literal, ``${note}`` left as an interpolation."""
    escaped = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def nix_expression() -> bytes:
    fods = "\n".join(f"  {name} = {expr};" for name, expr in _fod_attrs())
    (note_name, note_text), (ref_name, ref_text) = TO_FILES
    fod_sri = NixHash.compute(HashAlgo.sha256, b"x").to_sri()
    fod_names = " ".join(n for n, _ in _fod_attrs())
    expr = f"""
let
  mk = attrs: builtins.derivation ({{ system = "x86_64-linux"; builder = "/bin/sh"; }} // attrs);
  note = builtins.toFile "{note_name}" {_nix_str(note_text)};
  ref = builtins.toFile "{ref_name}" {_nix_str(ref_text)};
{fods}
  multi = mk {{ name = "multi"; outputs = [ "out" "lib" "dev" "bin" ]; args = [ "-c" "echo $out" ]; }};
  a = mk {{ name = "a"; dep = multi.dev; }};
  b = mk {{ name = "b"; dep = a; both = "${{multi.lib}} ${{multi}}"; }};
  c = mk {{ name = "c"; dep = b; fod = fod-sha256-recursive-hex; fod2 = fod-md5-flat-sri; }};
  escapes = mk {{
    name = "escapes";
    text = "quote \\" backslash \\\\ newline \\n tab \\t cr \\r dollar \\${{x}} $HOME done";
    unicode = "räksmörgås 肥猪 🌮 ∀x";
    raw = ''multi
      line ${{"$"}}{{x}} with 'quotes' and \\backslash
    '';
    empty = "";
    args = [ "a\\"b" "c\\\\d" "e\\nf" "" "🌮" ];
    latin1 = "LATIN1_PLACEHOLDER";
    notes = [ note ref ];
    placeholder = builtins.placeholder "dev";
    outputs = [ "out" "dev" ];
  }};
  passfile = mk {{
    name = "passfile";
    passAsFile = [ "big" "small" ];
    big = builtins.concatStringsSep "\\n" (builtins.genList (i: "line ${{toString i}}") 2000);
    small = "x";
    dep = escapes.dev;
  }};
  structured = mk {{
    name = "structured";
    __structuredAttrs = true;
    outputs = [ "out" "doc" ];
    nested = {{ list = [ 1 2.5 true null "s\\n" {{ x = "y"; }} ]; }};
    dep = c;
    file = ref;
  }};
  fod-with-inputs = mk {{
    name = "fod-with-inputs";
    outputHash = "{fod_sri}";
    outputHashMode = "recursive";
    dep = passfile;
    src = note;
  }};
  top = mk {{ name = "top"; deps = [ structured fod-with-inputs escapes.out ]; }};
in [ multi a b c escapes passfile structured fod-with-inputs top {fod_names} ]
"""
    return expr.encode().replace(b"LATIN1_PLACEHOLDER", bytes.fromhex("c5c4d6") + b" latin1")


@dataclass(frozen=True)
class Instantiated:
    top: list[str]
    files: dict[str, bytes]  # every .drv of the closure


@pytest.fixture(scope="module")
def instantiated(tmp_path_factory: pytest.TempPathFactory) -> Instantiated:
    nix_instantiate = require_tool("nix-instantiate")
    path = tmp_path_factory.mktemp("nixexpr") / "expr.nix"
    path.write_bytes(nix_expression())
    proc = subprocess.run(
        [nix_instantiate, str(path)], capture_output=True, check=False, timeout=100
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    top = proc.stdout.decode().split()
    files: dict[str, bytes] = {}
    todo = list(top)
    while todo:
        drv_path = todo.pop()
        if drv_path in files:
            continue
        files[drv_path] = Path(drv_path).read_bytes()
        todo.extend(Derivation.from_aterm(files[drv_path]).input_derivations)
    return Instantiated(top, files)


def _from_store(path: str) -> Derivation:
    return Derivation.from_aterm(Path(path).read_bytes())


def test_the_expression_covers_enough(instantiated: Instantiated) -> None:
    drvs = [Derivation.from_aterm(b) for b in instantiated.files.values()]
    assert len(instantiated.top) == 9 + 24
    assert sum(d.is_fixed_output() for d in drvs) == 25
    assert any(len(d.outputs) == 4 for d in drvs)
    assert any(d.structured_attrs is not None for d in drvs)
    assert any(len(d.input_derivations) >= 3 for d in drvs)
    assert any(not v.isascii() and not _is_utf8(v) for d in drvs for v in d.environment.values())


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_round_trip_byte_for_byte(instantiated: Instantiated) -> None:
    for path, data in instantiated.files.items():
        drv = Derivation.from_aterm(data)
        assert drv.to_aterm() == data, path
        drv.validate()


def test_drv_paths(instantiated: Instantiated) -> None:
    for path, data in instantiated.files.items():
        assert Derivation.from_aterm(data).drv_path().absolute == path


def test_output_paths_from_our_hash_modulo(instantiated: Instantiated) -> None:
    cache: dict[str, bytes] = {}
    for path, data in sorted(instantiated.files.items()):
        drv = Derivation.from_aterm(data)
        hash_modulo_with(drv, _from_store, cache)  # fills the cache with the inputs' hashes
        blank = dataclasses.replace(
            drv,
            outputs={n: o.with_path("") for n, o in drv.outputs.items()},
            environment={k: b"" if k in drv.outputs else v for k, v in drv.environment.items()},
        )
        computed = calculate_output_paths(blank, cache.__getitem__)
        assert computed.outputs == drv.outputs, path
        assert computed == drv, path
    assert set(cache) < set(instantiated.files)


def test_fixed_outputs_match_make_fixed_output_path(instantiated: Instantiated) -> None:
    for data in instantiated.files.values():
        drv = Derivation.from_aterm(data)
        if drv.is_fixed_output():
            out = drv.outputs["out"]
            assert out.nix_hash is not None
            path = make_fixed_output_path(drv.name, out.nix_hash, out.recursive)
            assert path.absolute == out.path


def test_to_file_and_placeholder(instantiated: Instantiated) -> None:
    (escapes,) = [
        d
        for d in map(Derivation.from_aterm, instantiated.files.values())
        if d.environment.get("name") == b"escapes"
    ]
    note_path, ref_path = escapes.environment["notes"].decode().split()
    note = make_text_path(TO_FILES[0][0], TO_FILES[0][1].encode(), [])
    assert note.absolute == note_path
    ref_content = TO_FILES[1][1].replace("${note}", note_path).encode()
    assert make_text_path(TO_FILES[1][0], ref_content, [note]).absolute == ref_path
    assert Path(ref_path).read_bytes() == ref_content
    assert escapes.input_sources == tuple(sorted([note_path, ref_path]))
    assert escapes.environment["placeholder"].decode() == hash_placeholder("dev")
    assert escapes.environment["latin1"] == bytes.fromhex("c5c4d6") + b" latin1"
    assert escapes.arguments == (b'a"b', b"c\\d", b"e\nf", b"", "🌮".encode())


def test_structured_attrs(instantiated: Instantiated) -> None:
    (drv,) = [
        d
        for d in map(Derivation.from_aterm, instantiated.files.values())
        if d.structured_attrs is not None
    ]
    assert drv.name == "structured"
    assert set(drv.environment) == {"__json", "out", "doc"}
    attrs = json.loads(drv.environment["__json"])
    assert attrs["nested"] == {"list": [1, 2.5, True, None, "s\n", {"x": "y"}]}


def test_nix_store_add_matches_make_fixed_output_path(tmp_path: Path) -> None:
    nix_store = require_tool("nix-store")
    files = []
    for i, content in enumerate([b"", b"hello\n", bytes(range(256)) * 10]):
        f = tmp_path / f"file-{i}.bin"
        f.write_bytes(content)
        files.append(f)

    def run(*args: str) -> list[str]:
        proc = subprocess.run(
            [nix_store, *args], capture_output=True, text=True, check=True, timeout=60
        )
        return proc.stdout.split()

    nars = [
        subprocess.run([nix_store, "--dump", str(f)], capture_output=True, check=True).stdout
        for f in files
    ]
    # nix-store --add: recursive sha256 ("source" paths)
    for f, nar, added in zip(files, nars, run("--add", *map(str, files)), strict=True):
        h = NixHash.compute(HashAlgo.sha256, nar)
        assert make_fixed_output_path(f.name, h, recursive=True).absolute == added
        assert run("--query", "--hash", added) == [h.to_nix_string()]
    for algo in (HashAlgo.md5, HashAlgo.sha1, HashAlgo.sha512):
        flat = run("--add-fixed", algo.value, *map(str, files))
        rec = run("--add-fixed", "--recursive", algo.value, *map(str, files))
        for f, nar, flat_path, rec_path in zip(files, nars, flat, rec, strict=True):
            flat_hash = NixHash.compute(algo, f.read_bytes())
            assert make_fixed_output_path(f.name, flat_hash, False).absolute == flat_path
            rec_hash = NixHash.compute(algo, nar)
            assert make_fixed_output_path(f.name, rec_hash, True).absolute == rec_path
    flat256 = run("--add-fixed", "sha256", *map(str, files))
    for f, flat_path in zip(files, flat256, strict=True):
        h = NixHash(HashAlgo.sha256, hashlib.sha256(f.read_bytes()).digest())
        assert make_fixed_output_path(f.name, h, False) == StorePath.from_absolute_path(flat_path)
