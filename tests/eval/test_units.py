"""The evaluator's small parts: URL table, command lines, output parsing, the batcher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import pytest

from clients.errors import InvalidRequest
from nixcompat.storepath import StorePath
from tests.eval.conftest import Stores
from tvixd.eval import EvaluationError, NixArg, NixEvaluator, evaluator_from_url
from tvixd.eval.batch import Batcher, SingleFlight
from tvixd.eval.instantiate import clean_stderr, instantiate_argv, parse_output_line

DRV = "/nix/store/8bmc2z0xyi5f4svq3fvjs01y4hlshli7-a.drv"

URLS_ACCEPTED = [
    ("nix://", "max_concurrency="),
    ("nix://?max_concurrency=3", "max_concurrency=3"),
    ("nix://?timeout=2.5&nix_instantiate=/usr/bin/nix-instantiate", "'/usr/bin/nix-instantiate'"),
]
URLS_REJECTED = [
    ("", "is not a URL"),
    ("nix", "is not a URL"),
    ("memory://", "unsupported scheme 'memory' \\(supported: nix://\\)"),
    ("nix:///usr/bin", "takes no host or path"),
    ("nix://host", "takes no host or path"),
    ("nix://?jobs=2", "unknown option 'jobs'"),
    ("nix://?max_concurrency=0", "max_concurrency must be a positive number, got '0'"),
    ("nix://?max_concurrency=two", "got 'two'"),
    ("nix://?max_concurrency=1.5", "got '1.5'"),
    ("nix://?timeout=-1", "timeout must be a positive number"),
    ("nix://?timeout=inf", "timeout must be a positive number"),
    ("nix://?timeout=1&timeout=2", "needs exactly one value"),
    ("nix://?timeout=", "needs exactly one value"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("url", "shown"), URLS_ACCEPTED)
async def test_urls_accepted(stores: Stores, url: str, shown: str) -> None:
    evaluator = await evaluator_from_url(
        url, blobs=stores.blobs, directories=stores.directories, pathinfos=stores.pathinfos
    )
    assert isinstance(evaluator, NixEvaluator)
    assert shown in repr(evaluator)
    await evaluator.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(("url", "message"), URLS_REJECTED)
async def test_urls_rejected(stores: Stores, url: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        await evaluator_from_url(
            url, blobs=stores.blobs, directories=stores.directories, pathinfos=stores.pathinfos
        )


def test_instantiate_argv() -> None:
    args = (NixArg("a", "1 + 1", is_string=False), NixArg("b", "-x y", is_string=True))
    assert instantiate_argv("nix-instantiate", Path("/f.nix"), "x.y", args) == [
        "nix-instantiate", "--option", "substituters", "",
        "--arg", "a", "1 + 1", "--argstr", "b", "-x y", "/f.nix", "-A", "x.y",
    ]  # fmt: skip
    assert instantiate_argv("n", Path("/f.nix"), None, ())[-1] == "/f.nix"
    assert instantiate_argv("n", Path("/f.nix"), "", ())[-2:] == ["-A", ""]


def test_parse_output_line() -> None:
    path = StorePath.from_absolute_path(DRV)
    assert parse_output_line(DRV, "a") == (path, None)
    assert parse_output_line(DRV + "!dev", "a") == (path, "dev")
    for line, message in [
        ("/nix/store/8bmc2z0xyi5f4svq3fvjs01y4hlshli7-a", "not a .drv path"),
        ("garbage", "'garbage', which is not a store path"),
        (DRV + "!", "empty output name"),
    ]:
        with pytest.raises(EvaluationError, match=message):
            parse_output_line(line, "a")


def test_clean_stderr() -> None:
    warning = (
        "warning: you did not specify '--add-root'; the result might be removed by the "
        "garbage collector"
    )
    assert clean_stderr(f"{warning}\nerror: boom\n\n       at x.nix:1:1\n") == (
        "error: boom\n\n       at x.nix:1:1"
    )
    assert clean_stderr(warning) == ""


class CountingFetch:
    """A fetch function recording its batches; keys below zero are errors."""

    def __init__(self, gate: anyio.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate

    async def __call__(self, keys: Sequence[int]) -> Mapping[int, str | Exception]:
        self.batches.append(list(keys))
        if self.gate is not None:
            await self.gate.wait()
        else:
            await anyio.sleep(0.01)
        return {k: ValueError(f"bad {k}") if k < 0 else f"v{k}" for k in keys}


@pytest.mark.asyncio
async def test_batcher_coalesces_and_caches() -> None:
    fetch = CountingFetch()
    batcher: Batcher[int, str] = Batcher(fetch, max_batch=3)
    results: dict[int, str | Exception] = {}

    async def get(key: int) -> None:
        try:
            results[key] = await batcher.get(key)
        except ValueError as exc:
            results[key] = exc

    async with anyio.create_task_group() as tg:
        for key in [1, 2, 3, 4, 5, -1, 2]:
            tg.start_soon(get, key)
    assert {k: v for k, v in results.items() if k >= 0} == {k: f"v{k}" for k in range(1, 6)}
    assert str(results[-1]) == "bad -1"
    assert fetch.batches == [[1], [2, 3, 4], [5, -1]]  # the first caller leads alone
    assert await batcher.get(3) == "v3"  # cached
    with pytest.raises(ValueError, match="bad -1"):  # errors are not cached
        await batcher.get(-1)
    assert fetch.batches[-1] == [-1]


@pytest.mark.asyncio
async def test_batcher_survives_a_cancelled_leader() -> None:
    gate = anyio.Event()
    fetch = CountingFetch(gate)
    batcher: Batcher[int, str] = Batcher(fetch)
    got: list[str] = []

    async def follower() -> None:
        got.append(await batcher.get(2))

    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await batcher.get(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await anyio.wait_all_tasks_blocked()  # the leader is fetching [1]
        tg.start_soon(follower)
        await anyio.wait_all_tasks_blocked()  # the follower waits for the next batch
        leader_scope.cancel()
        await anyio.wait_all_tasks_blocked()  # the follower took over
        gate.set()
    assert got == ["v2"]
    assert fetch.batches == [[1], [2]]


@pytest.mark.asyncio
async def test_single_flight() -> None:
    flights: SingleFlight[str] = SingleFlight()
    order: list[str] = []

    async def holder(name: str) -> None:
        async with flights.hold("k") as waited:
            order.append(f"{name} in (waited={waited})")
            await anyio.sleep(0.01)
            order.append(f"{name} out")

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder, "a")
        tg.start_soon(holder, "b")
    assert order == ["a in (waited=False)", "a out", "b in (waited=True)", "b out"]
