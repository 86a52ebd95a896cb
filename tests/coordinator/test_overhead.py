"""The coordinator's cost per derivation on a 1000-node graph with ``dummy://`` (printed, not asserted).

Run with ``pytest -s`` to see the figures.  Timings belong in ``bench/``; this
test only checks that the job succeeds and prints what it cost, next to the
floor set by the state machines alone (a machine restored with the journal
listener plus the five events of a built derivation).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest

from fsm import DerivationMachine, DerivationRecord
from proto.gen.tvixd import v1 as tvixd_pb
from tests.coordinator.harness import running
from tests.coordinator.nixfiles import graph_nix, instantiate, layered

pytestmark = [pytest.mark.nix, pytest.mark.slow, pytest.mark.asyncio]

NODES = 1000
WIDTH = 50


class _Listener:
    def after_transition(self, event: str, model: object) -> None:
        pass


def fsm_floor(count: int) -> float:
    """Seconds per derivation for the machines alone (create + 5 events, all kept alive)."""
    machines = []
    listener = _Listener()  # one shared listener, as the coordinator attaches
    start = time.perf_counter()
    for i in range(count):
        machine = DerivationMachine.from_record(
            DerivationRecord(f"/nix/store/{i:032d}-x.drv"), listeners=[listener]
        )
        machines.append(machine)
    for machine in machines:
        machine.evaluated()
        machine.lookup_done(outputs_present=False)
        machine.inputs_ready(all_inputs_done=True)
        machine.build_finished(success=True)
        machine.push_finished(success=True)
    return (time.perf_counter() - start) / count


async def test_overhead_per_derivation(tmp_path: Path) -> None:
    deps = layered(NODES, WIDTH)
    tops = list(deps)[-WIDTH:]
    nix = graph_nix(tmp_path, deps)
    drvs = instantiate(nix, *tops)
    async with running(tmp_path, max_jobs=8) as env:
        wall, cpu = time.perf_counter(), time.process_time()
        job = await env.submit_drvs(drvs)
        async for _ in env.coordinator.watch(job.id):  # in process: no client decoding cost
            pass
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        final = await env.stub.get_job(tvixd_pb.GetJobRequest(id=job.id))
        assert final.counts == {"DERIVATION_STATE_DONE": NODES}
        assert env.builder.builds == NODES  # type: ignore[attr-defined]

        again = time.perf_counter()
        job = await env.submit_drvs(drvs)
        async for _ in env.coordinator.watch(job.id):
            pass
        again = time.perf_counter() - again
    gc.collect()
    floor = fsm_floor(NODES)
    print(
        f"\n{NODES} derivations ({WIDTH} wide, dummy://, max_jobs 8): "
        f"{wall / NODES * 1e3:.2f} ms wall, {cpu / NODES * 1e3:.2f} ms CPU per derivation "
        f"(everything: .drv reads, lookups, dummy builds, NAR hashing, journal, events); "
        f"state machines alone: {floor * 1e3:.2f} ms; "
        f"a second submit (lookup of the {WIDTH} roots only): {again * 1e3:.0f} ms"
    )
