"""Fixtures for the evaluator suites: in-memory stores, a ``nix://`` evaluator, real Nix as reference."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from clients.castore.protocols import BlobService, DirectoryService
from clients.store.protocols import PathInfoService
from nixcompat.derivation import Derivation
from tests.conftest import require_tool
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.eval import NixEvaluator
from tvixd.store.pathinfo.memory import MemoryPathInfoService

NO_SUBSTITUTERS = ["--option", "substituters", ""]
ADD_ROOT_WARNING = "warning: you did not specify '--add-root'; the result might be removed by the garbage collector"


@dataclass
class Stores:
    blobs: BlobService
    directories: DirectoryService
    pathinfos: PathInfoService


@pytest.fixture
def stores() -> Stores:
    return Stores(MemoryBlobService(), MemoryDirectoryService(), MemoryPathInfoService())


@pytest_asyncio.fixture
async def evaluator(stores: Stores) -> AsyncIterator[NixEvaluator]:
    require_tool("nix-instantiate")
    require_tool("nix-store")
    evaluator = NixEvaluator(stores.blobs, stores.directories, stores.pathinfos, max_concurrency=4)
    yield evaluator
    await evaluator.close()


def run_nix(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a Nix tool (blocking: call from sync fixtures or a worker thread)."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


def nix_error(*argv: str) -> str:
    """The stderr of a failing Nix command, minus the --add-root warning."""
    result = run_nix(*argv, check=False)
    assert result.returncode != 0, result
    return "\n".join(line for line in result.stderr.splitlines() if line != ADD_ROOT_WARNING)


def show_derivation(*drv_paths: str) -> dict[str, Any]:
    """``nix show-derivation -r`` of ``drv_paths``: the closure, as Nix's JSON."""
    result = run_nix(
        "nix", "--extra-experimental-features", "nix-command", "show-derivation", "-r", *drv_paths
    )
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def derivation_as_json(drv: Derivation) -> dict[str, Any]:
    """Our parsed derivation in ``nix show-derivation``'s JSON shape."""
    outputs: dict[str, dict[str, str]] = {}
    for name, out in drv.outputs.items():
        entry = {"path": out.path}
        if out.is_fixed:
            entry |= {"hashAlgo": out.hash_algo, "hash": out.hash}
        outputs[name] = entry
    return {
        "outputs": outputs,
        "inputSrcs": list(drv.input_sources),
        "inputDrvs": {path: list(names) for path, names in drv.input_derivations.items()},
        "system": drv.system,
        "builder": drv.builder,
        "args": [a.decode() for a in drv.arguments],
        "env": {k: v.decode() for k, v in drv.environment.items()},
    }


def path_info_json(*paths: str) -> dict[str, dict[str, Any]]:
    """``nix path-info --json`` by path (NAR hash, size, references, ca as Nix registered them)."""
    result = run_nix(
        "nix", "--extra-experimental-features", "nix-command", *NO_SUBSTITUTERS,
        "path-info", "--json", *paths,
    )  # fmt: skip
    return {entry["path"]: entry for entry in json.loads(result.stdout)}


PROJECT = """\
{ greeting ? "hello", n ? 1 }:
let
  mk = attrs: derivation ({
    system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo ${greeting} > $out" ];
  } // attrs);
  note = builtins.toFile "note.txt" "${greeting} ${toString n}";
  pointer = builtins.toFile "pointer.txt" "see ${note}";
  data = ./data;
  named = builtins.path { path = ./data; name = "named-data"; };
  flat = builtins.path { path = ./data/file.txt; name = "flat-file"; recursive = false; };
  dep = mk { name = "dep"; };
in {
  inherit dep;
  top = mk { name = "top"; inherit dep note pointer data named flat; count = n; };
  multi = mk { name = "multi"; outputs = [ "out" "dev" "doc" ]; };
  fixed = mk {
    name = "fixed"; outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "0000000000000000000000000000000000000000000000000000";
  };
  list = [ dep (mk { name = "in-list"; }) ];
  nested.deeper = mk { name = "deeper"; inherit dep; };
  boom = throw "boom";
}
"""


def write_project(root: Path) -> Path:
    """The test project: ``default.nix`` plus a ``data`` directory (file, executable, symlink, subdir)."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    (data / "file.txt").write_text("some data\n")
    (data / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (data / "run.sh").chmod(0o755)
    (data / "sub" / "deep.txt").write_bytes(bytes(range(256)) * 300)
    (data / "link").symlink_to("file.txt")
    nix_file = root / "default.nix"
    nix_file.write_text(PROJECT)
    return nix_file


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("nix-instantiate")
    return write_project(tmp_path_factory.mktemp("project"))
