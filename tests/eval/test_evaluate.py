"""``NixEvaluator.evaluate`` and ``read_derivation`` against the real ``nix-instantiate``."""

from __future__ import annotations

import os
import threading
from contextlib import aclosing
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from nixcompat.storepath import StorePath
from tests.eval.conftest import (
    Stores,
    derivation_as_json,
    nix_error,
    run_nix,
    show_derivation,
)
from tvixd.eval import EvalRequest, EvaluatedRoot, EvaluationError, NixArg, NixEvaluator

ATTRS = ("dep", "top", "multi", "multi.dev", "list", "fixed", "nested.deeper")
ARGS = (NixArg("greeting", "hi there", is_string=True), NixArg("n", "2 + 3", is_string=False))
NIX_ARGS = ["--argstr", "greeting", "hi there", "--arg", "n", "2 + 3"]


async def collect(evaluator: NixEvaluator, request: EvalRequest) -> list[EvaluatedRoot]:
    async with aclosing(evaluator.evaluate(request)) as roots:
        return [root async for root in roots]


def expected_roots(
    project: Path, attrs: tuple[str, ...], nix_args: list[str]
) -> set[EvaluatedRoot]:
    """What nix-instantiate prints per attribute (one call per attribute, as the evaluator does)."""
    expected = set()
    closure: dict[str, list[str]] = {}
    lines_by_attr = {}
    for attr in attrs:
        out = run_nix("nix-instantiate", *nix_args, str(project), "-A", attr).stdout.split()
        lines_by_attr[attr] = out
    drvs = {line.partition("!")[0] for lines in lines_by_attr.values() for line in lines}
    for path, drv in show_derivation(*drvs).items():
        closure[path] = list(drv["outputs"])
    for attr, lines in lines_by_attr.items():
        for line in lines:
            path, bang, output = line.partition("!")
            outputs = (output,) if bang else tuple(closure[path])
            expected.add(EvaluatedRoot(attr, StorePath.from_absolute_path(path), outputs))
    return expected


@pytest.mark.asyncio
@pytest.mark.parametrize("with_args", [False, True], ids=["defaults", "arg-argstr"])
async def test_roots_equal_nix_instantiate(
    evaluator: NixEvaluator, project: Path, with_args: bool
) -> None:
    request = EvalRequest(project, ATTRS, ARGS if with_args else ())
    roots = await collect(evaluator, request)
    expected = await anyio.to_thread.run_sync(
        expected_roots, project, ATTRS, NIX_ARGS if with_args else []
    )
    assert len(roots) == len(set(roots)) == len(expected)
    assert set(roots) == expected
    by_attr = {root.attr_path: root for root in roots}
    assert by_attr["multi"].outputs == ("dev", "doc", "out")
    assert by_attr["multi.dev"].outputs == ("dev",)
    assert by_attr["multi"].drv_path == by_attr["multi.dev"].drv_path
    assert len([r for r in roots if r.attr_path == "list"]) == 2


@pytest.mark.asyncio
async def test_arguments_reach_nix(evaluator: NixEvaluator, project: Path) -> None:
    plain = await collect(evaluator, EvalRequest(project, ("top",)))
    with_args = await collect(evaluator, EvalRequest(project, ("top",), ARGS))
    assert plain[0].drv_path != with_args[0].drv_path
    drv = await evaluator.read_derivation(with_args[0].drv_path)
    assert drv.environment["count"] == b"5"
    assert drv.arguments[1] == b"echo hi there > $out"


@pytest.mark.asyncio
async def test_derivations_equal_show_derivation(evaluator: NixEvaluator, project: Path) -> None:
    roots = await collect(evaluator, EvalRequest(project, ATTRS, ARGS))
    expected = await anyio.to_thread.run_sync(
        lambda: show_derivation(*{str(r.drv_path) for r in roots})
    )
    assert len(expected) >= len({r.drv_path for r in roots})
    for path, want in expected.items():
        drv = await evaluator.read_derivation(StorePath.from_absolute_path(path))
        assert derivation_as_json(drv) == want, path
    top = next(r for r in roots if r.attr_path == "top")
    sources = (await evaluator.read_derivation(top.drv_path)).input_sources
    names = {StorePath.from_absolute_path(s).name for s in sources}
    assert names == {"note.txt", "pointer.txt", "data", "named-data", "flat-file"}


TOP_LEVELS = {
    "attrset": 'let d = n: derivation { name = n; system = "x"; builder = "/bin/sh"; }; '
    'in { a = d "a"; b = d "b"; notDrv = 3; sub = { c = d "c"; }; }',
    "recursing": 'let d = n: derivation { name = n; system = "x"; builder = "/bin/sh"; }; '
    'in { a = d "a"; sub = { recurseForDerivations = true; c = d "c"; }; }',
    "list": 'let d = n: derivation { name = n; system = "x"; builder = "/bin/sh"; }; '
    'in [ (d "a") (d "b") ]',
    "derivation": 'derivation { name = "single"; system = "x"; builder = "/bin/sh"; }',
    "function": '{ name ? "f" }: derivation { inherit name; system = "x"; builder = "/bin/sh"; }',
}


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", list(TOP_LEVELS))
async def test_top_level_value_like_nix(evaluator: NixEvaluator, tmp_path: Path, kind: str) -> None:
    nix_file = tmp_path / f"{kind}.nix"
    await anyio.Path(nix_file).write_text(TOP_LEVELS[kind])
    roots = await collect(evaluator, EvalRequest(nix_file))
    printed = (await anyio.run_process(["nix-instantiate", str(nix_file)])).stdout.decode().split()
    assert sorted(str(r.drv_path) for r in roots) == sorted(printed)
    assert printed
    assert all(r.attr_path == "" for r in roots)


@pytest.mark.asyncio
async def test_roots_stream_as_each_attribute_finishes(
    evaluator: NixEvaluator, tmp_path: Path
) -> None:
    """The quick attribute is yielded while the slow one is still blocked (reading a FIFO)."""
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    nix_file = tmp_path / "stream.nix"
    await anyio.Path(nix_file).write_text(
        'let d = n: derivation { name = n; system = "x"; builder = "/bin/sh"; }; in '
        '{ quick = d "quick"; slow = d ("slow-" + builtins.readFile ./gate); }'
    )

    def open_gate() -> None:
        with open(fifo, "w") as f:
            f.write("open")

    seen: list[str] = []
    async with aclosing(evaluator.evaluate(EvalRequest(nix_file, ("slow", "quick")))) as roots:
        with anyio.fail_after(30):
            async for root in roots:
                seen.append(root.drv_path.name)
                if root.attr_path == "quick":
                    # only now may the slow attribute finish: nothing was held back
                    threading.Thread(target=open_gate, daemon=True).start()
    assert seen == ["quick.drv", "slow-open.drv"]


ERRORS = {
    "syntax": ("let x = ; in x", None),
    "missing-attr": ('{ a = derivation { name = "a"; system = "x"; builder = "/b"; }; }', "nope"),
    "throw": ('{ a = throw "boom"; }', "a"),
    "not-a-derivation": ("{ a = 42; }", "a"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", list(ERRORS))
async def test_evaluation_errors_are_nix_verbatim(
    evaluator: NixEvaluator, tmp_path: Path, case: str
) -> None:
    source, attr = ERRORS[case]
    nix_file = tmp_path / "broken.nix"
    await anyio.Path(nix_file).write_text(source)
    argv = ["nix-instantiate", str(nix_file)] + (["-A", attr] if attr else [])
    expected = await anyio.to_thread.run_sync(lambda: nix_error(*argv))
    with pytest.raises(EvaluationError) as info:
        await collect(evaluator, EvalRequest(nix_file, (attr,) if attr else ()))
    assert info.value.message == expected.strip("\n")
    assert str(info.value) == info.value.message
    assert info.value.attr_path == (attr or "")
    assert info.value.message.startswith("error:")
    assert "--add-root" not in info.value.message


@pytest.mark.asyncio
async def test_one_failing_attribute_fails_the_evaluation(
    evaluator: NixEvaluator, project: Path
) -> None:
    with pytest.raises(EvaluationError, match=r"^error: boom$") as info:
        await collect(evaluator, EvalRequest(project, ("dep", "boom")))
    assert info.value.attr_path == "boom"


@pytest.mark.asyncio
async def test_missing_file(evaluator: NixEvaluator, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "default.nix"
    with pytest.raises(
        EvaluationError, match=r"the Nix file '.*nowhere/default.nix' does not exist"
    ):
        await collect(evaluator, EvalRequest(missing, ("a",)))


@pytest.mark.asyncio
async def test_missing_binary_is_an_evaluation_error(stores: Stores, project: Path) -> None:
    evaluator = NixEvaluator(
        stores.blobs, stores.directories, stores.pathinfos, nix_instantiate="/nonexistent/nix-inst"
    )
    with pytest.raises(EvaluationError, match="cannot run /nonexistent/nix-inst"):
        await collect(evaluator, EvalRequest(project, ("dep",)))
    await evaluator.close()
    with pytest.raises(RuntimeError, match="closed"):
        await collect(evaluator, EvalRequest(project, ("dep",)))


@pytest.mark.asyncio
async def test_closing_early_stops_evaluation(evaluator: NixEvaluator, project: Path) -> None:
    async with aclosing(evaluator.evaluate(EvalRequest(project, ATTRS))) as roots:
        async for root in roots:
            assert root.attr_path in ATTRS
            break
    # the evaluator is still usable afterwards
    assert len(await collect(evaluator, EvalRequest(project, ("dep",)))) == 1
