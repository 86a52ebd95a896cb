"""derivation → BuildRequest against the upstream vectors (vectors/build_requests.json)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from clients.build.model import BuildRequest
from clients.castore.model import DirectoryNode, FileNode, Node, SymlinkNode
from nixcompat.derivation import Derivation
from tests.conftest import require_tool
from tests.vectors import entries, load
from tvixd.build.translate import (
    NIX_ENVIRONMENT_VARS,
    derivation_to_build_request,
    pass_as_file_path,
    refscan_candidates,
)

VECTORS = entries("build_requests", kind="build_request")


def _node(spec: dict[str, Any], name: str) -> Node:
    match spec["type"]:
        case "directory":
            return DirectoryNode(name.encode(), bytes.fromhex(spec["digest"]), spec["size"])
        case "file":
            return FileNode(
                name.encode(), bytes.fromhex(spec["digest"]), spec["size"], spec["executable"]
            )
    return SymlinkNode(name.encode(), spec["target"].encode())


def _constraints(request: BuildRequest) -> list[str]:
    c = request.constraints
    out = [f"system:{c.system}"]
    out += ["network_access"] * c.network_access + ["provide_bin_sh"] * c.provide_bin_sh
    return sorted(out)


def _translate(vector: dict[str, Any], **kwargs: Any) -> BuildRequest:
    drv = Derivation.from_aterm(vector["aterm"].encode())
    inputs = {name: _node(spec, "ignored") for name, spec in vector["inputs"].items()}
    return derivation_to_build_request(drv, inputs, **kwargs)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["drv_file"])
def test_matches_upstream_vector(vector: dict[str, Any]) -> None:
    request = _translate(vector, upstream_needles=True)
    expected = vector["expected"]
    assert list(request.command_args) == expected["command_args"]
    assert list(request.outputs) == expected["outputs"]
    assert [(e.key, e.value.decode()) for e in request.environment_vars] == [
        (e["key"], e["value"]) for e in expected["environment_vars"]
    ]
    assert request.inputs_dir == expected["inputs_dir"]
    assert request.working_dir == expected["working_dir"]
    assert list(request.scratch_paths) == expected["scratch_paths"]
    assert _constraints(request) == expected["constraints"]
    assert [(f.path, f.contents.decode()) for f in request.additional_files] == [
        (f["path"], f["contents"]) for f in expected["additional_files"]
    ]
    assert list(request.refscan_needles) == expected["refscan_needles"]
    assert [n.name.decode() for n in request.inputs] == sorted(vector["inputs"])


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["drv_file"])
def test_default_needles_extend_upstream_with_inputs(vector: dict[str, Any]) -> None:
    upstream = _translate(vector, upstream_needles=True).refscan_needles
    request = _translate(vector)
    assert request.refscan_needles[: len(upstream)] == upstream
    extra = {name.split("-", 1)[0] for name in vector["inputs"]} - set(upstream)
    assert set(request.refscan_needles[len(upstream) :]) == extra
    drv = Derivation.from_aterm(vector["aterm"].encode())
    candidates = refscan_candidates(drv, vector["inputs"])
    assert tuple(p.hash_part for p in candidates) == request.refscan_needles


def test_fixed_sandbox_variables() -> None:
    assert dict(NIX_ENVIRONMENT_VARS) == load("build_requests")["nix_environment_vars"]


def test_pass_as_file_names_match_nix() -> None:
    (probe,) = entries("build_requests", kind="nix_build_env_probe")
    for name, basename in probe["pass_as_file_basenames"].items():
        assert pass_as_file_path(name) == f"/build/{basename}"


@pytest.mark.nix
def test_environment_matches_what_a_nix_build_sees(tmp_path: Path) -> None:
    """The probe derivation's env keys and sandbox-independent values, as a Nix 2.8 build saw them."""
    (probe,) = entries("build_requests", kind="nix_build_env_probe")
    require_tool("nix-instantiate")
    expr = tmp_path / "probe.nix"
    expr.write_text(probe["nix_expr"])
    drv_path = subprocess.run(
        ["nix-instantiate", str(expr)], capture_output=True, text=True, check=True
    ).stdout.strip()
    drv = Derivation.from_aterm(Path(drv_path).read_bytes())
    request = derivation_to_build_request(
        drv, {}, build_cores=int(probe["observed_env"]["NIX_BUILD_CORES"])
    )
    env = {e.key: e.value.decode() for e in request.environment_vars}
    # the probe printed the passAsFile variables separately, not among env_keys
    assert set(env) == set(probe["env_keys"]) | {"barPath", "bazPath"}
    assert {k: env[k] for k in probe["observed_env"]} == probe["observed_env"]
    for name, basename in probe["pass_as_file_basenames"].items():
        assert env[name + "Path"] == f"/build/{basename}"
