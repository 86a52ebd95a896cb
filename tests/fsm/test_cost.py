"""Construction cost: measured and printed (``pytest -s``), never asserted (timings go to bench/)."""

from __future__ import annotations

import time

from fsm import DerivationMachine, DrvState, FailureRecorder
from tests.fsm.reference import drv_record


def test_construct_1000_machines() -> None:
    recorder = FailureRecorder()
    t0 = time.perf_counter()
    fresh = [DerivationMachine.new(f"/nix/store/{i:032d}-x.drv") for i in range(1000)]
    t1 = time.perf_counter()
    record = drv_record(DrvState.BUILD)
    restored = [DerivationMachine.from_record(record) for _ in range(1000)]
    t2 = time.perf_counter()
    listened = [DerivationMachine.from_record(record, listeners=[recorder]) for _ in range(1000)]
    t3 = time.perf_counter()
    for machine in restored:
        machine.build_finished(success=True)
    t4 = time.perf_counter()
    print(
        f"\n1000 derivation machines: fresh {t1 - t0:.3f} s, restored {t2 - t1:.3f} s, "
        f"restored with a listener {t3 - t2:.3f} s; 1000 build_finished events {t4 - t3:.3f} s"
    )
    assert len({m.model.drv_path for m in fresh}) == 1000  # every machine has its own model
    assert all(m.state is DrvState.PUSH for m in restored)
    assert all(m.state is DrvState.BUILD for m in listened)
