"""Jobs naming ``.drv`` paths directly: validation and clear errors for bad paths and files."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from nixcompat.storepath import StorePath
from tests.eval.conftest import run_nix
from tvixd.eval import (
    DerivationFileError,
    EvaluatedRoot,
    EvaluationError,
    NixEvaluator,
    roots_from_drv_paths,
)


def instantiate(project: Path, *attrs: str) -> list[str]:
    args = [a for attr in attrs for a in ("-A", attr)]
    return run_nix("nix-instantiate", str(project), *args).stdout.split()


def add_to_store(directory: Path, name: str, data: bytes) -> str:
    """``nix-store --add`` of a file called ``name``: a store path ending in ``name``."""
    path = directory / name
    path.write_bytes(data)
    return run_nix("nix-store", "--add", str(path)).stdout.strip()


@pytest.mark.asyncio
async def test_roots_from_drv_paths(evaluator: NixEvaluator, project: Path) -> None:
    dep, multi = await anyio.to_thread.run_sync(instantiate, project, "dep", "multi")
    roots = await evaluator.roots_from_drv_paths([dep, multi, f"{multi}!doc", dep])
    assert roots == [
        EvaluatedRoot("", StorePath.from_absolute_path(dep), ("out",)),
        EvaluatedRoot("", StorePath.from_absolute_path(multi), ("dev", "doc", "out")),
        EvaluatedRoot("", StorePath.from_absolute_path(multi), ("doc",)),
    ]
    # the module-level function works with any Evaluator
    assert await roots_from_drv_paths(evaluator, [StorePath.from_absolute_path(dep)]) == roots[:1]


@pytest.mark.asyncio
async def test_drv_path_errors(evaluator: NixEvaluator, project: Path, tmp_path: Path) -> None:
    (multi,) = await anyio.to_thread.run_sync(instantiate, project, "multi")
    source = (await evaluator.read_derivation(StorePath.from_absolute_path(multi))).builder
    # nix-store --add parses a .drv and refuses garbage, but lets non-canonical ATerm through
    unsorted = b'Derive([("out","","","")],[],[],"x","/b",[],[("out",""),("name","q")])'
    garbage = await anyio.to_thread.run_sync(add_to_store, tmp_path, "unsorted.drv", unsorted)
    # well-formed, but not a derivation's own text: Nix adds it as a source
    sorted_env = b'Derive([("out","","","")],[],[],"x","/b",[],[("name","q"),("out","")])'
    copied = await anyio.to_thread.run_sync(add_to_store, tmp_path, "copy.drv", sorted_env)
    # the name the derivation would have, but a source's path, not the text path of its bytes
    same_name = await anyio.to_thread.run_sync(add_to_store, tmp_path, "q.drv", sorted_env)
    missing = "/nix/store/00000000000000000000000000000000-missing.drv"
    cases = [
        ("relative/x.drv", r"'relative/x.drv' is not a derivation store path"),
        ("/nix/store/tooshort.drv", "is not a derivation store path"),
        (f"{multi}!", "names an empty output"),
        (f"{multi}!bin", r"has no output 'bin' \(it has dev, doc, out\)"),
        (missing, f"derivation {missing} does not exist in the local Nix store"),
        (garbage, f"{garbage} is not a valid derivation: .*at byte 57: unsorted env key 'name'"),
        (copied, f"{copied} is not a valid derivation: its contents are the derivation .*-q.drv"),
        (same_name, f"{same_name} is not a valid derivation: its contents are the derivation "),
    ]
    assert source == "/bin/sh"
    for value, message in cases:
        with pytest.raises(DerivationFileError, match=message):
            await evaluator.roots_from_drv_paths([value])
    # a store path that is not a .drv
    not_drv = await anyio.to_thread.run_sync(add_to_store, tmp_path, "plain.txt", b"x")
    with pytest.raises(EvaluationError, match=r"is not a derivation: a \.drv store path is needed"):
        await evaluator.roots_from_drv_paths([not_drv])
    with pytest.raises(DerivationFileError, match=r"is not a derivation \(\.drv\) path"):
        await evaluator.read_derivation(StorePath.from_absolute_path(not_drv))


@pytest.mark.asyncio
async def test_read_derivation_is_cached(evaluator: NixEvaluator, project: Path) -> None:
    (dep,) = await anyio.to_thread.run_sync(instantiate, project, "dep")
    path = StorePath.from_absolute_path(dep)
    first = await evaluator.read_derivation(path)
    assert await evaluator.read_derivation(path) is first
    assert first.drv_path() == path


@pytest.mark.asyncio
async def test_read_derivations_in_order_with_errors(
    evaluator: NixEvaluator, project: Path
) -> None:
    dep, multi = await anyio.to_thread.run_sync(instantiate, project, "dep", "multi")
    dep_path, multi_path = StorePath.from_absolute_path(dep), StorePath.from_absolute_path(multi)
    missing = StorePath.from_absolute_path(
        "/nix/store/00000000000000000000000000000000-missing.drv"
    )
    cached = await evaluator.read_derivation(dep_path)
    results = await evaluator.read_derivations([multi_path, missing, dep_path, multi_path])
    assert len(results) == 4
    first, error, again, repeated = results
    assert not isinstance(first, DerivationFileError)
    assert first.drv_path() == multi_path
    assert repeated == first
    assert again is cached  # from the cache, not read again
    assert isinstance(error, DerivationFileError)
    assert f"derivation {missing} does not exist in the local Nix store" in error.message
    # what was read is cached for read_derivation; errors are not
    assert await evaluator.read_derivation(multi_path) is first
    assert await evaluator.read_derivations([]) == []


@pytest.mark.asyncio
async def test_read_derivations_after_close(evaluator: NixEvaluator, project: Path) -> None:
    (dep,) = await anyio.to_thread.run_sync(instantiate, project, "dep")
    await evaluator.close()
    with pytest.raises(RuntimeError, match="the evaluator is closed"):
        await evaluator.read_derivations([StorePath.from_absolute_path(dep)])
