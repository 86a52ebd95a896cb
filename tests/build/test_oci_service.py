"""The OCI builder's service behaviour: concurrency, log streaming, host paths, /bin/sh."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from clients.build.model import BuildConstraints
from clients.errors import InvalidRequest
from clients.store.nar import CastoreNarCalculator
from nixcompat.storepath import StorePath
from tests.build.helpers import Store, read_output_file, sh_derivation
from tests.conftest import require_tool
from tvixd.build.oci.bundle import SandboxConfig
from tvixd.build.oci.runner import MAX_LINE
from tvixd.build.oci.service import OciBuildService, OciConfig
from tvixd.build.translate import derivation_to_build_request

pytestmark = [pytest.mark.asyncio, pytest.mark.runc]


async def run_pair(builder: OciBuildService, store: Store, busybox: StorePath) -> list[bytes]:
    """Two builds started together, each logging start and end around a short sleep."""
    order: list[bytes] = []

    async def on_log(line: bytes) -> None:
        order.append(line)

    async def build(name: str) -> None:
        script = f"echo {name}-start; sleep 1; echo {name}-end; mkdir $out"
        await store.build(builder, sh_derivation(f"pair-{name}", script, busybox), on_log=on_log)

    async with anyio.create_task_group() as tg:
        for name in ("a", "b"):
            tg.start_soon(build, name)
    return order


async def test_max_builds_limits_concurrency(
    store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    serial = await OciBuildService.open(
        tmp_path / "one", store.blobs, store.directories, OciConfig(max_builds=1)
    )
    order = await run_pair(serial, store, busybox)
    await serial.close()
    first, second = order[0][:1], order[2][:1]
    assert order == [first + b"-start", first + b"-end", second + b"-start", second + b"-end"]

    parallel = await OciBuildService.open(
        tmp_path / "two", store.blobs, store.directories, OciConfig(max_builds=2)
    )
    order = await run_pair(parallel, store, busybox)
    await parallel.close()
    assert sorted(order[:2]) == [b"a-start", b"b-start"]


async def test_log_lines_stream_in_order_and_long_lines_split(
    builder: OciBuildService, store: Store, busybox: StorePath
) -> None:
    lines: list[bytes] = []

    async def on_log(line: bytes) -> None:
        lines.append(line)

    long_line = MAX_LINE + 10
    script = (
        "for i in 1 2 3; do echo out-$i; echo err-$i >&2; done; "
        f"head -c {long_line} /dev/zero | tr '\\0' x; echo; printf 'no newline'; mkdir $out"
    )
    await store.build(builder, sh_derivation("logs", script, busybox), on_log=on_log)
    assert lines[:6] == [b"out-1", b"err-1", b"out-2", b"err-2", b"out-3", b"err-3"]
    assert lines[6:] == [b"x" * MAX_LINE, b"x" * 10, b"no newline"]


async def test_allowed_host_paths_are_read_only(
    store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    await anyio.Path(shared).mkdir()
    await anyio.Path(shared / "data").write_text("from the host\n")
    builder = await OciBuildService.open(
        tmp_path / "state",
        store.blobs,
        store.directories,
        OciConfig(allowed_ro_paths=(str(shared),)),
    )
    script = (
        f"mkdir $out; cat {shared}/data > $out/data;"
        f" if echo x > {shared}/data 2>/dev/null; then echo writable; else echo read-only; fi > $out/write"
    )
    drv = sh_derivation("host-path", script, busybox)
    request = derivation_to_build_request(drv, store.closure({busybox}))
    c = request.constraints
    request = replace(
        request,
        constraints=BuildConstraints(
            c.system, available_ro_paths=(str(shared),), provide_bin_sh=True
        ),
    )
    build = await builder.build(request)
    await builder.close()
    assert await read_output_file(store, build, b"data") == b"from the host\n"
    assert await read_output_file(store, build, b"write") == b"read-only\n"
    assert await anyio.Path(shared / "data").read_text() == "from the host\n"


async def test_bin_sh_is_provided(
    builder: OciBuildService, store: Store, busybox: StorePath
) -> None:
    drv = sh_derivation("bin-sh", "/bin/sh -c 'echo via /bin/sh' > $out", busybox)
    build = await store.build(builder, drv)
    assert build.outputs[0].size == len(b"via /bin/sh\n")  # type: ignore[union-attr]


async def test_without_a_sandbox_shell_bin_sh_requests_are_refused(
    store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    builder = await OciBuildService.open(
        tmp_path / "state",
        store.blobs,
        store.directories,
        OciConfig(sandbox=SandboxConfig(sandbox_shell=None)),
    )
    with pytest.raises(InvalidRequest, match="no sandbox shell"):
        await store.build(builder, sh_derivation("no-sh", "mkdir $out", busybox))
    await builder.close()


async def test_non_utf8_environment_is_refused_clearly(
    builder: OciBuildService, store: Store, busybox: StorePath
) -> None:
    drv = sh_derivation("latin1", "mkdir $out", busybox, env={"x": "placeholder"})
    drv = type(drv)(**{**drv.__dict__, "environment": {**drv.environment, "x": b"\xc5\xc4"}})
    with pytest.raises(
        InvalidRequest, match="environment variable 'x' has a value that is not UTF-8"
    ):
        await store.build(builder, drv)


@pytest.mark.parametrize("chunk_size", [1, 7, 4096, 1 << 20])
async def test_line_splitting_does_not_depend_on_chunking(chunk_size: int) -> None:
    from tvixd.build.oci.runner import _Lines

    data = b"a\n\nb" + b"x" * (2 * MAX_LINE + 3) + b"\nc" * 3 + b"tail"
    got: list[bytes] = []

    async def on_line(line: bytes) -> None:
        got.append(line)

    lines = _Lines(on_line)
    for i in range(0, len(data), chunk_size):
        await lines.feed(data[i : i + chunk_size])
    await lines.finish()
    long = b"b" + b"x" * (2 * MAX_LINE + 3)
    expected = [b"a", b"", long[:MAX_LINE], long[MAX_LINE : 2 * MAX_LINE], long[2 * MAX_LINE :]]
    assert got == [*expected, b"c", b"c", b"ctail"]
    assert tuple(got[-10:]) == tuple(lines.tail)


async def test_builds_sharing_a_root_file_system_see_only_their_own_mountpoints(
    store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    host = "/usr/share/zoneinfo"  # not under /tmp: a tmpfs in the container would hide it
    require_tool("runc")
    builder = await OciBuildService.open(
        tmp_path / "state", store.blobs, store.directories, OciConfig(allowed_ro_paths=(host,))
    )
    try:
        listing = "mkdir $out; ls -a / > $out/root"
        plain = derivation_to_build_request(
            sh_derivation("plain", listing, busybox), store.closure({busybox})
        )
        c = plain.constraints
        with_ro = replace(
            derivation_to_build_request(
                sh_derivation("with-ro", listing, busybox), store.closure({busybox})
            ),
            constraints=BuildConstraints(c.system, available_ro_paths=(host,), provide_bin_sh=True),
        )
        roots = [await read_output_file(store, await builder.build(r), b"root") for r in
                 (plain, with_ro, plain)]  # fmt: skip
    finally:
        await builder.close()
    assert roots[0] == roots[2]
    assert b"usr" not in roots[0].split()
    assert set(roots[1].split()) == set(roots[0].split()) | {b"usr"}
    shared = [p.name for p in (tmp_path / "state" / "builds").iterdir() if p.name[:5] == "root-"]
    assert len(shared) == 2


async def test_outputs_nar_hashes_are_memoised_exactly(
    builder: OciBuildService, store: Store, busybox: StorePath
) -> None:
    """Each output's NAR size and sha256 are remembered for the push, equal to a render from the
    castore: a small file, an executable one and a directory (the general ingest)."""
    script = (
        "echo small > $out; printf '#!/bin/sh\\n' > $exe; chmod +x $exe;"
        " mkdir -p $dir/sub; echo nested > $dir/sub/f; ln -s sub/f $dir/link"
    )
    drv = sh_derivation("memo", script, busybox, outputs=("out", "exe", "dir"))
    build = await store.build(builder, drv)
    assert len(build.outputs) == 3
    fresh = CastoreNarCalculator(store.blobs, store.directories)  # no memo: renders the NAR
    for node in build.outputs:
        assert builder.nar_memo.get(node) == await fresh.calculate_nar(node)
