"""Failures of the OCI builder, each reported clearly and leaving nothing behind."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from clients.build.errors import NO_EXIT_CODE, BuildFailed
from clients.build.model import AdditionalFile, BuildConstraints
from clients.castore.model import B3Digest
from clients.errors import InvalidRequest
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.nar import nar_hash_path
from nixcompat.storepath import StorePath
from tests.build.helpers import Store, leftovers, sh_derivation
from tvixd.build.oci.service import OciBuildService, OciConfig
from tvixd.build.translate import derivation_to_build_request

pytestmark = [pytest.mark.asyncio, pytest.mark.runc]


async def assert_clean(builder: OciBuildService, state: Path) -> None:
    """No container is left in runc's state, no bundle on disk, nothing the build wrote."""
    assert await builder._runc.list_ids() == []
    idle = builder.store_dirs.idle
    assert await anyio.to_thread.run_sync(leftovers, state / "builds", idle) == []


async def test_non_zero_exit(
    builder: OciBuildService, store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    drv = sh_derivation("fails", "echo starting; echo 'something broke' >&2; exit 3", busybox)
    with pytest.raises(BuildFailed) as info:
        await store.build(builder, drv)
    assert info.value.exit_code == 3
    assert "exit code 3" in info.value.reason
    assert info.value.log_tail == (b"starting", b"something broke")
    assert "something broke" in str(info.value)
    await assert_clean(builder, tmp_path / "state")


async def test_missing_output(
    builder: OciBuildService, store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    script = "mkdir $out; echo half-built > $out/f; echo made out"
    drv = sh_derivation("two", script, busybox, outputs=("dev", "out"))
    with pytest.raises(BuildFailed) as info:
        await store.build(builder, drv)
    dev = drv.outputs["dev"].path
    assert info.value.reason == f"builder succeeded but did not produce output '{dev}'"
    assert info.value.exit_code == 0
    assert info.value.log_tail == (b"made out",)
    assert not await store.blobs.has(B3Digest.of(b"half-built\n"))
    await assert_clean(builder, tmp_path / "state")


async def test_timeout(store: Store, busybox: StorePath, tmp_path: Path) -> None:
    builder = await OciBuildService.open(
        tmp_path / "state", store.blobs, store.directories, OciConfig(timeout=1.0)
    )
    try:
        drv = sh_derivation("slow", "echo waiting; sleep 100; mkdir $out", busybox)
        started = time.monotonic()
        with pytest.raises(BuildFailed) as info:
            await store.build(builder, drv)
        assert time.monotonic() - started < 10
        assert info.value.reason == "build timed out after 1.0 seconds"
        assert info.value.exit_code == NO_EXIT_CODE
        assert info.value.log_tail == (b"waiting",)
        await assert_clean(builder, tmp_path / "state")
    finally:
        await builder.close()


async def test_cancellation_kills_the_container(
    builder: OciBuildService, store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    drv = sh_derivation("cancelled", "echo running; sleep 100; mkdir $out", busybox)
    running = anyio.Event()

    async def on_log(line: bytes) -> None:
        if line == b"running":
            running.set()

    started = time.monotonic()
    async with anyio.create_task_group() as tg:

        async def build() -> None:
            await store.build(builder, drv, on_log=on_log)
            pytest.fail("the build was not cancelled")

        tg.start_soon(build)
        with anyio.fail_after(30):
            await running.wait()
        assert len(await builder._runc.list_ids()) == 1
        tg.cancel_scope.cancel()
    assert time.monotonic() - started < 30
    await assert_clean(builder, tmp_path / "state")


async def test_fixed_output_hash_mismatch(
    builder: OciBuildService, store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    wrong = hashlib.sha256(b"what was promised").hexdigest()
    drv = sh_derivation(
        "fod", "echo checking; printf 'what was built' > $out", busybox,
        fixed=("flat", "sha256", wrong),
    )  # fmt: skip
    with pytest.raises(BuildFailed) as info:
        await store.build(builder, drv)
    got = NixHash(HashAlgo.sha256, hashlib.sha256(b"what was built").digest())
    specified = NixHash(HashAlgo.sha256, bytes.fromhex(wrong))
    assert info.value.reason == (
        f"hash mismatch in fixed-output derivation '{drv.outputs['out'].path}':\n"
        f"  specified: {specified.to_sri()}\n"
        f"     got:    {got.to_sri()}"
    )
    assert info.value.log_tail == (b"checking",)
    # nothing half-built: the output's contents never reached the castore
    assert not await store.blobs.has(B3Digest.of(b"what was built"))
    await assert_clean(builder, tmp_path / "state")


async def test_recursive_fixed_output_checked_by_nar_hash(
    builder: OciBuildService, store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    script = "mkdir -p $out/d; printf x > $out/d/f; ln -s d/f $out/l"
    tree = tmp_path / "expected"

    def make_tree() -> None:
        (tree / "d").mkdir(parents=True)
        (tree / "d" / "f").write_bytes(b"x")
        (tree / "l").symlink_to("d/f")

    await anyio.to_thread.run_sync(make_tree)
    digest, _ = await anyio.to_thread.run_sync(nar_hash_path, tree)
    for algo, value in (("sha256", digest.hex()), ("sha256", hashlib.sha256(b"no").hexdigest())):
        drv = sh_derivation("rfod", script, busybox, fixed=("recursive", algo, value))
        if value == digest.hex():
            build = await store.build(builder, drv)
            assert build.outputs_needles == ((),)
        else:
            with pytest.raises(BuildFailed, match="hash mismatch"):
                await store.build(builder, drv)


async def test_flat_fixed_output_must_be_a_plain_file(
    builder: OciBuildService, store: Store, busybox: StorePath
) -> None:
    digest = hashlib.sha256(b"").hexdigest()
    drv = sh_derivation("notflat", "mkdir $out", busybox, fixed=("flat", "sha256", digest))
    with pytest.raises(BuildFailed, match="should be a non-executable regular file"):
        await store.build(builder, drv)


async def test_fixed_output_must_not_reference_store_paths(
    builder: OciBuildService, store: Store, busybox: StorePath
) -> None:
    content = f"{busybox.absolute}\n".encode()
    drv = sh_derivation(
        "refs", f"echo {busybox.absolute} > $out", busybox,
        fixed=("flat", "sha256", hashlib.sha256(content).hexdigest()),
    )  # fmt: skip
    with pytest.raises(BuildFailed, match="illegal path references in fixed-output derivation"):
        await store.build(builder, drv)


async def test_requests_this_builder_cannot_run(
    builder: OciBuildService, store: Store, busybox: StorePath
) -> None:

    drv = sh_derivation("x", "mkdir $out", busybox)
    request = derivation_to_build_request(drv, store.closure({busybox}))
    other = replace(request, constraints=BuildConstraints("aarch64-darwin", provide_bin_sh=True))
    with pytest.raises(InvalidRequest, match="'aarch64-darwin' builder is required"):
        await builder.build(other)
    ro = replace(
        request, constraints=BuildConstraints("x86_64-linux", available_ro_paths=("/etc",))
    )
    with pytest.raises(InvalidRequest, match="available_ro_paths '/etc' is not allowed"):
        await builder.build(ro)
    outside = replace(request, outputs=("elsewhere/out",))
    with pytest.raises(InvalidRequest, match="not inside a scratch path"):
        await builder.build(outside)
    into_input = replace(
        request, additional_files=(AdditionalFile(f"nix/store/{busybox.basename}/bin/x", b""),)
    )
    with pytest.raises(InvalidRequest, match="would be inside the read-only input"):
        await builder.build(into_input)
    shadowing = replace(request, outputs=(f"nix/store/{busybox.basename}",))
    with pytest.raises(InvalidRequest, match="is also an input"):
        await builder.build(shadowing)


async def test_cycle_between_outputs_is_rejected_like_nix(
    builder: OciBuildService, store: Store, busybox: StorePath
) -> None:
    script = "mkdir $out $dev; echo $dev > $out/d; echo $out > $dev/o"
    drv = sh_derivation("cycle", script, busybox, outputs=("dev", "out"))
    with pytest.raises(BuildFailed, match=r"cycle detected in build of '/nix/store/.*-cycle.drv'"):
        await store.build(builder, drv)
    # one direction and self references are fine
    fine = sh_derivation(
        "nocycle", "mkdir $out $dev; echo $dev $out > $out/d", busybox, outputs=("dev", "out")
    )
    await store.build(builder, fine)
    out = StorePath.from_absolute_path(fine.outputs["out"].path)
    dev = StorePath.from_absolute_path(fine.outputs["dev"].path)
    assert store.references[out] == {out, dev}
    assert store.references[dev] == frozenset()


async def test_unstorable_output_and_unexecutable_builder(
    builder: OciBuildService, store: Store, busybox: StorePath
) -> None:
    drv = sh_derivation("fifo", "mkdir $out; mkfifo $out/pipe", busybox)
    with pytest.raises(BuildFailed, match=r"cannot be stored: .*unsupported file type"):
        await store.build(builder, drv)
    missing = sh_derivation("nobuilder", "true", busybox)
    request = derivation_to_build_request(missing, store.closure({busybox}))
    from dataclasses import replace

    with pytest.raises(
        BuildFailed, match=r"could not execute the builder: .*no such file or directory"
    ):
        await builder.build(replace(request, command_args=("/nix/store/nonexistent",)))
