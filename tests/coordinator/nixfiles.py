"""Nix files for the coordinator tests, and the real Nix as the reference.

Derivations follow nixpkgs' bootstrap style: a static busybox imported with
``builtins.path`` (an input source) and called as ``…/bin/busybox sh -c``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path

from nixcompat import nixbase32
from tests.conftest import require_tool
from tests.coordinator.harness import copy_busybox

PRELUDE = """
{ salt ? "" }:
let
  bb = builtins.path { path = ./busybox; name = "busybox"; };
  mk = name: script: attrs: derivation ({
    inherit name salt;
    system = builtins.currentSystem;
    builder = "${bb}/bin/busybox";
    args = [ "sh" "-c" script ];
  } // attrs);
"""

FIXED_FLAT = b"fixed-content\n"


def write_nix(directory: Path, body: str, name: str = "default.nix") -> Path:
    """``directory/name`` = :data:`PRELUDE` + ``body`` (``in { ... }``), with busybox beside it."""
    copy_busybox(directory)
    path = directory / name
    path.write_text(PRELUDE + body)
    return path


def nar_sha256_of_tree(tree: Path) -> str:
    """``nix-hash --type sha256 --base32`` of ``tree`` (the recursive hash Nix would check)."""
    require_tool("nix-hash")
    return subprocess.run(
        ["nix-hash", "--type", "sha256", "--base32", str(tree)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def dag_nix(directory: Path) -> Path:
    """A DAG with two outputs, flat and recursive fixed outputs, passAsFile and references."""
    tree = directory / "fixed-tree"
    tree.mkdir(exist_ok=True)
    (tree / "x").write_text("x\n")
    recursive = nar_sha256_of_tree(tree)
    flat = nixbase32.encode(hashlib.sha256(FIXED_FLAT).digest())
    return write_nix(
        directory,
        f"""
  leaf = mk "leaf" "echo building leaf; mkdir $out; echo leaf > $out/data" {{}};
  multi = mk "multi" ''
    mkdir $out $dev
    echo out-of-multi > $out/o
    echo ${{leaf}} > $dev/ref-to-leaf
    echo "built multi"
  '' {{ outputs = [ "out" "dev" ]; }};
  fixedflat = mk "fixed-flat" "printf 'fixed-content\\n' > $out" {{
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "{flat}";
  }};
  fixedrec = mk "fixed-rec" "mkdir $out; echo x > $out/x" {{
    outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = "{recursive}";
  }};
  pass = mk "pass" ''
    mkdir $out
    cat $bigPath > $out/big
    echo ${{multi.dev}} > $out/dev
  '' {{ passAsFile = [ "big" ]; big = "a value passed as a file, naming ${{leaf}}"; }};
  top = mk "top" ''
    mkdir $out
    echo ${{pass}} ${{multi}} ${{fixedflat}} > $out/refs
    cat ${{fixedflat}} ${{fixedrec}}/x >> $out/refs
    ln -s ${{multi.dev}}/ref-to-leaf $out/link
  '' {{}};
in {{ inherit leaf multi fixedflat fixedrec pass top; }}
""",
    )


def instantiate(path: Path, *attrs: str, args: Mapping[str, str] | None = None) -> list[str]:
    """``nix-instantiate`` (one call for every attribute): the ``.drv`` paths, in order."""
    require_tool("nix-instantiate")
    argv = ["nix-instantiate", str(path)]
    for name, value in (args or {}).items():
        argv += ["--argstr", name, value]
    for attr in attrs:
        argv += ["-A", attr]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return [line.split("!")[0] for line in out.split()]


def show_derivations(drv_paths: list[str]) -> dict[str, dict[str, object]]:
    """``nix show-derivation`` of the paths (and their closures with ``-r``)."""
    out = subprocess.run(
        [
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "show-derivation",
            "-r",
            *drv_paths,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data: dict[str, dict[str, object]] = json.loads(out)
    return data


def nix_build(drv_paths: list[str]) -> None:
    """Realise ``drv_paths`` with the real Nix (no substituters)."""
    require_tool("nix-store")
    subprocess.run(
        ["nix-store", "--realise", "--option", "substituters", "", *drv_paths],
        check=True,
        capture_output=True,
        text=True,
    )


def nix_nar_sha256(path: str) -> tuple[int, bytes]:
    """``nix-store --dump path``: the NAR's size and sha256."""
    nar = subprocess.run(["nix-store", "--dump", path], check=True, capture_output=True).stdout
    return len(nar), hashlib.sha256(nar).digest()


def nix_references(path: str) -> list[str]:
    """``nix-store --query --references path``, sorted."""
    out = subprocess.run(
        ["nix-store", "--query", "--references", path], check=True, capture_output=True, text=True
    ).stdout
    return sorted(out.split())


def graph_nix(
    directory: Path,
    deps: Mapping[str, list[str]],
    *,
    fail: Mapping[str, str] | None = None,
    name: str = "graph.nix",
) -> Path:
    """A file whose attributes are the derivations ``deps`` names, each depending on its list.

    ``fail`` maps names to a ``DUMMY_BUILD_FAIL`` reason (the dummy builder fails them).
    """
    lines = []
    for node, inputs in deps.items():
        extra = f'DUMMY_BUILD_FAIL = "{(fail or {})[node]}"; ' if node in (fail or {}) else ""
        refs = " ".join(f'"${{{d}}}"' for d in inputs)
        lines.append(
            f'  {node} = mk "{node}" "mkdir $out; echo $deps > $out/deps" '
            f"{{ {extra}deps = [ {refs} ]; }};"
        )
    return write_nix(
        directory,
        "\n".join(lines) + "\nin {\n" + "".join(f"  inherit {node};\n" for node in deps) + "}\n",
        name,
    )


def layered(count: int, width: int, fan_in: int = 3) -> dict[str, list[str]]:
    """``count`` nodes in layers of ``width``; each depends on up to ``fan_in`` of the layer below."""
    deps: dict[str, list[str]] = {}
    for i in range(count):
        layer, pos = divmod(i, width)
        below = [f"n{(layer - 1) * width + (pos + k) % width}" for k in range(fan_in)]
        deps[f"n{i}"] = sorted(set(below)) if layer else []
    return deps
