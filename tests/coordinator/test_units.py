"""The coordinator's parts on their own: graph membership, fan-out, retry policy, push."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import anyio
import pytest

from clients.build.errors import BuildError, BuildFailed
from clients.build.model import Build, BuildConstraints, BuildRequest
from clients.castore.model import FileNode
from clients.castore.streams import put_bytes
from clients.errors import InvalidRequest, NotFound, StorageError
from clients.store.nar import CastoreNarCalculator
from fsm import DerivationRecord, DrvState
from nixcompat.derivation import Derivation, Output
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.narinfo import CaMethod, ContentAddress
from nixcompat.signing import SigningKey
from nixcompat.storepath import StorePath, make_fixed_output_path
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.coordinator.dispatch import Dispatcher
from tvixd.coordinator.graph import Graph, Node
from tvixd.coordinator.hub import Hub
from tvixd.coordinator.push import HashMismatch, Pusher
from tvixd.coordinator.retry import RetryPolicy, classify
from tvixd.store.pathinfo.memory import MemoryPathInfoService

H = "0a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r"


def node(name: str, state: DrvState = DrvState.WAITING) -> Node:
    path = StorePath.parse_basename(f"{H}-{name}.drv")
    attempt = 1 if state in (DrvState.BUILD, DrvState.PUSH) else 0
    return Node(path, DerivationRecord(path.absolute, state, attempt))


@pytest.mark.asyncio
async def test_follow_ups_run_on_the_followers_and_are_drained() -> None:
    async def realise(node: Node, generation: int) -> None:
        pass

    dispatcher = Dispatcher(1, realise, followers=2)
    running: list[str] = []
    started: list[str] = []
    most = 0
    release = anyio.Event()
    two_started = anyio.Event()

    def work(name: str, forever: bool = False) -> Callable[[], Awaitable[None]]:
        async def follow() -> None:
            nonlocal most
            started.append(name)
            running.append(name)
            most = max(most, len(running))
            if len(started) == 2:
                two_started.set()
            try:
                await (anyio.sleep(3600) if forever else release.wait())
            finally:
                running.remove(name)

        return follow

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            for i in range(5):
                dispatcher.follow_up(node(f"n{i}", DrvState.PUSH), work(f"n{i}"))
            await two_started.wait()
            release.set()
            await dispatcher.drain(10)  # the queued ones ran too
            assert sorted(started) == [f"n{i}" for i in range(5)]
            assert most == 2
            tg.cancel_scope.cancel()

        dispatcher = Dispatcher(1, realise, followers=2)
        started.clear()
        two_started = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            for i in range(3):
                dispatcher.follow_up(node(f"s{i}", DrvState.PUSH), work(f"s{i}", forever=True))
            await two_started.wait()
            await dispatcher.drain(0.1)  # cancels the two running, drops the queued one
            assert started == ["s0", "s1"]
            assert running == []
            dispatcher.follow_up(node("late", DrvState.PUSH), work("late"))  # drained: dropped
            await anyio.sleep(0.05)
            assert started == ["s0", "s1"]
            tg.cancel_scope.cancel()


def test_attach_reaches_the_inputs_of_waiting_nodes_only() -> None:
    graph = Graph()
    top, mid, leaf, building, under = (
        graph.add(node(n, s))
        for n, s in (
            ("top", DrvState.WAITING),
            ("mid", DrvState.WAITING),
            ("leaf", DrvState.LOOKUP),
            ("building", DrvState.BUILD),
            ("under", DrvState.DONE),
        )
    )
    graph.link(top, mid, ("out",))
    graph.link(mid, leaf, ("out",))
    graph.link(top, building, ("out",))
    graph.link(building, under, ("out",))
    assert graph.attach("job", top) == [top, building, mid, leaf]  # not below a building node
    assert graph.attach("job", mid) == []
    assert mid.dependents == {top}
    under.record = DerivationRecord(under.key, DrvState.DONE)
    graph.evict(under)
    assert graph.get(under.key) is None
    assert building.dependents == {top}
    leaf.record = DerivationRecord(leaf.key, DrvState.DONE)
    with pytest.raises(AssertionError, match="jobs need it"):
        graph.evict(leaf)


@pytest.mark.asyncio
async def test_hub_delivers_in_order_and_marks_slow_subscribers() -> None:
    hub: Hub[str, int] = Hub(limit=3)
    with hub.subscribe("job") as fast, hub.subscribe("job") as slow:
        hub.publish("job", [1, 2])
        assert await fast.next_batch() == [1, 2]
        hub.publish("other", [99])
        hub.publish("job", [3, 4, 5, 6])
        assert await fast.next_batch() == []  # lagged too: 3 items max
        assert fast.lagged
        assert slow.lagged
        fast.caught_up()
        hub.publish("job", [7])
        assert await fast.next_batch() == [7]
    hub.publish("job", [8])  # nobody listens: dropped
    assert repr(hub) == "Hub(0 subscriptions)"


def test_retry_policy_classifies_and_backs_off() -> None:
    failed = classify(BuildFailed("exit code 2", exit_code=2, log_tail=[b"boom"]))
    assert (failed.retryable, failed.reason) == (False, "exit code 2")
    assert "boom" in failed.log_tail
    assert classify(BuildError("runc vanished")).retryable
    assert classify(StorageError("disk")).retryable
    assert classify(TimeoutError()).retryable
    assert not classify(InvalidRequest("bad")).retryable
    assert not classify(NotFound("gone")).retryable
    assert classify(KeyError("x")).reason.startswith("internal error: KeyError")
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.0, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        RetryPolicy(max_attempts=0)


def _drv(outputs: dict[str, Output], name: str = "thing") -> Derivation:
    return Derivation(
        outputs=outputs,
        input_derivations={},
        input_sources=(),
        system="x86_64-linux",
        builder="/bin/sh",
        arguments=(),
        environment={"name": name.encode()},
    )


async def _pushed(
    drv: Derivation, contents: dict[str, bytes], needles: dict[str, tuple[int, ...]]
) -> tuple[Pusher, Build, MemoryPathInfoService]:
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    pathinfos = MemoryPathInfoService()
    outputs = sorted(out.path[1:] for out in drv.outputs.values())
    by_path = {out.path[1:]: name for name, out in drv.outputs.items()}
    request = BuildRequest(
        command_args=("/bin/sh",),
        outputs=tuple(outputs),
        constraints=BuildConstraints(system="x86_64-linux"),
        refscan_needles=tuple(StorePath.from_absolute_path("/" + o).hash_part for o in outputs),
    )
    nodes = []
    for out in outputs:
        data = contents[by_path[out]]
        digest = await put_bytes(blobs, data)
        nodes.append(FileNode(out.rsplit("/", 1)[1].encode(), digest, len(data)))
    build = Build(request, tuple(nodes), tuple(needles.get(by_path[o], ()) for o in outputs))
    pusher = Pusher(
        blobs=blobs,
        directories=directories,
        pathinfos=pathinfos,
        nar=CastoreNarCalculator(blobs, directories),
        signing_key=SigningKey.generate("unit-1"),
    )
    return pusher, build, pathinfos


@pytest.mark.asyncio
async def test_push_builds_path_infos_with_references_deriver_and_signature() -> None:
    out = StorePath.parse_basename(f"{H}-thing")
    dev = StorePath.parse_basename(f"{'1' * 32}-thing-dev")
    drv = _drv({"out": Output(out.absolute), "dev": Output(dev.absolute)})
    drv_path = StorePath.parse_basename(f"{'2' * 32}-thing.drv")
    # needles are in sorted output order: index 0 = out ("0a1b…"), index 1 = dev ("1111…")
    pusher, build, pathinfos = await _pushed(drv, {"out": b"o", "dev": b"d"}, {"out": (0, 1)})
    candidates = (out, dev) if out.hash_part < dev.hash_part else (dev, out)
    infos = await pusher.path_infos(drv_path, drv, build, candidates)
    await pusher.put(infos)
    stored = {info.store_path: info for info in infos}
    assert stored[out].references == (out, dev)
    assert stored[dev].references == ()
    nar = b"".join(_nar_of_file(b"o"))
    assert (stored[out].nar_size, stored[out].nar_sha256) == (
        len(nar),
        hashlib.sha256(nar).digest(),
    )
    assert stored[out].deriver == drv_path
    assert stored[out].ca is None
    assert len(stored[out].signatures) == 1
    assert await pathinfos.get(out.digest) == stored[out]


@pytest.mark.asyncio
async def test_push_checks_fixed_outputs_and_sets_their_content_address() -> None:
    data = b"fixed-content\n"
    good = NixHash(HashAlgo.sha256, hashlib.sha256(data).digest())
    path = make_fixed_output_path("thing", good, recursive=False)
    drv = _drv({"out": Output.fixed(good, recursive=False, path=path.absolute)})
    drv_path = StorePath.parse_basename(f"{'2' * 32}-thing.drv")
    pusher, build, _ = await _pushed(drv, {"out": data}, {})
    (info,) = await pusher.path_infos(drv_path, drv, build, (path,))
    assert info.ca == ContentAddress(CaMethod.flat, good)

    pusher, build, _ = await _pushed(drv, {"out": b"something else"}, {})
    with pytest.raises(HashMismatch, match="hash mismatch in fixed-output derivation output"):
        await pusher.path_infos(drv_path, drv, build, (path,))


def _nar_of_file(data: bytes) -> list[bytes]:
    def s(x: bytes) -> bytes:
        pad = (8 - len(x) % 8) % 8
        return len(x).to_bytes(8, "little") + x + b"\0" * pad

    return [
        s(b"nix-archive-1"),
        s(b"("),
        s(b"type"),
        s(b"regular"),
        s(b"contents"),
        s(data),
        s(b")"),
    ]
