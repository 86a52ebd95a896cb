"""The sandbox: what a build can write, see and reach, and what it leaves behind."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from clients.build.model import Build
from clients.castore.model import FileNode
from clients.castore.streams import read_blob
from nixcompat.storepath import StorePath
from tests.build.helpers import Store, read_output_file, sh_derivation
from tvixd.build.oci.service import OciBuildService

pytestmark = [pytest.mark.asyncio, pytest.mark.runc]


async def read_file(store: Store, build: Build, name: bytes) -> bytes:
    return await read_output_file(store, build, name)


def probe(attempts: dict[str, str]) -> str:
    """A script recording ``ok`` or ``denied`` per attempt in $out/results."""
    lines = ["mkdir $out"]
    for label, command in attempts.items():
        lines.append(f"if ({command}) 2>/dev/null; then r=ok; else r=denied; fi")
        lines.append(f"echo {label}=$r >> $out/results")
    return "\n".join(lines)


def results(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().splitlines())


async def test_writes_outside_scratch_paths_fail(
    builder: OciBuildService, store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    bb = busybox.absolute
    attempts = {
        "build_dir": "echo x > /build/f",
        "own_output": "echo x > $out/f",
        "tmp": "echo x > /tmp/f",
        "new_store_path": f"mkdir /nix/store/{'0' * 32}-other",
        "root": "echo x > /f",
        "etc": "echo x > /etc/passwd",
        "bin_sh": "echo x > /bin/sh",
        "input_file": f"echo x > {bb}/bin/busybox",
        "input_dir": f"mkdir {bb}/new",
        "input_rename": f"mv {bb} /nix/store/{'1' * 32}-moved",
        "input_remove": f"rm -rf {bb}",
        "input_chmod": f"chmod 777 {bb}/bin/busybox",
        "proc_sys": "echo 1 > /proc/sys/kernel/sysrq",
        "mount": "mount -t tmpfs none /build",
        "mknod": "mknod /build/null c 1 3",
        "chown": "touch /build/o; chown 0 /build/o",
    }
    drv = sh_derivation("writes", probe(attempts), busybox)
    build = await store.build(builder, drv)
    got = results(await read_file(store, build, b"results"))
    allowed = {"build_dir", "own_output", "tmp", "new_store_path"}
    assert got == {k: "ok" if k in allowed else "denied" for k in attempts}
    # the shared, materialized input is untouched
    (materialized,) = await anyio.to_thread.run_sync(
        lambda: [p for p in (tmp_path / "state" / "inputs").iterdir()]
    )
    assert await anyio.to_thread.run_sync(lambda: sorted(os.listdir(materialized / "bin"))) == [
        "busybox"
    ]


async def test_only_mounted_paths_are_visible(
    builder: OciBuildService, store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    marker = tmp_path / "host-marker"
    await anyio.Path(marker).write_text("host")
    script = (
        "mkdir $out; cd /; ls -a / > $out/root; ls -a /nix/store > $out/store;"
        f"if test -e {marker}; then echo visible > $out/marker; else echo hidden > $out/marker; fi;"
        "ls /proc | grep -c '^[0-9]' > $out/pids; ls /dev > $out/dev"
    )
    drv = sh_derivation("visible", script, busybox)
    build = await store.build(builder, drv)
    root = (await read_file(store, build, b"root")).split()
    assert sorted(root) == sorted(
        [b".", b"..", b"bin", b"build", b"dev", b"etc", b"nix", b"proc", b"tmp"]
    )
    store_entries = set((await read_file(store, build, b"store")).split())
    assert store_entries == {
        b".",
        b"..",
        busybox.basename.encode(),
        drv.outputs["out"].path[11:].encode(),
    }
    assert await read_file(store, build, b"marker") == b"hidden\n"
    # ls, grep and the shell: nothing of the host's processes
    assert int(await read_file(store, build, b"pids")) <= 4
    devices = set((await read_file(store, build, b"dev")).split())
    assert {b"null", b"zero", b"full", b"random", b"urandom", b"tty"} <= devices
    assert not devices & {b"sda", b"vda", b"kvm", b"mem", b"kmsg"}


async def test_network_only_for_fixed_output(
    builder: OciBuildService, store: Store, busybox: StorePath
) -> None:
    import hashlib

    from anyio.abc import SocketStream

    async def pong(client: SocketStream) -> None:
        async with client:
            await client.send(b"pong\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, pong)
        attempt = f"nc -w 5 127.0.0.1 {port} < /dev/null || echo refused"
        plain = sh_derivation("net", f"({attempt}) > $out", busybox)
        build = await store.build(builder, plain)
        assert isinstance(build.outputs[0], FileNode)
        assert await read_blob(store.blobs, build.outputs[0].digest) == b"refused\n"
        fixed = sh_derivation(
            "netfod", f"({attempt}) > $out", busybox,
            fixed=("flat", "sha256", hashlib.sha256(b"pong\n").hexdigest()),
        )  # fmt: skip
        await store.build(builder, fixed)  # the hash proves the server answered
        tg.cancel_scope.cancel()


async def test_builds_cannot_see_each_other(
    builder: OciBuildService, store: Store, busybox: StorePath
) -> None:
    secret = "s3cr3t-" + os.urandom(8).hex()
    first_running = anyio.Event()

    async def on_log(line: bytes) -> None:
        if line == b"ready":
            first_running.set()

    holder = sh_derivation(
        "holder", f"echo {secret} > /build/secret; echo ready; sleep 3; mkdir $out", busybox
    )
    snoop = (
        "mkdir $out; (ls -la /proc/*/root/build/ /build; cat /proc/*/root/build/secret /build/secret;"
        " find / -name secret; ps) > $out/seen 2>&1; true"
    )
    seeker = sh_derivation("seeker", snoop, busybox)
    seen: list[bytes] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: store.build(builder, holder, on_log=on_log))
        with anyio.fail_after(30):
            await first_running.wait()
        build = await store.build(builder, seeker)
        seen.append(await read_file(store, build, b"seen"))
    assert secret.encode() not in seen[0]
    assert b"sleep" not in seen[0]


async def test_background_processes_do_not_survive(
    builder: OciBuildService, store: Store, busybox: StorePath
) -> None:
    marker = str(90000 + int.from_bytes(os.urandom(2), "big"))
    script = (
        f"(trap '' HUP TERM INT; exec sleep {marker}) & "
        f"setsid sleep {marker} & "
        f"nohup sleep {marker} > /dev/null 2>&1 & "
        "echo started; mkdir $out"
    )
    drv = sh_derivation("daemon", script, busybox)
    await store.build(builder, drv)

    def leftovers() -> list[str]:
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = f.read()
                except OSError:
                    continue
                if marker.encode() in cmdline.split(b"\0"):
                    found.append(pid)
        return found

    assert await anyio.to_thread.run_sync(leftovers) == []
    assert await builder._runc.list_ids() == []


async def test_runs_as_an_unprivileged_user(
    builder: OciBuildService, store: Store, busybox: StorePath
) -> None:
    script = (
        "mkdir $out; id > $out/id; grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs)' "
        "/proc/self/status > $out/status; hostname > $out/hostname; ulimit -n > $out/nofile"
    )
    build = await store.build(builder, sh_derivation("who", script, busybox))
    assert await read_file(store, build, b"id") == b"uid=1000(nixbld) gid=100(nixbld)\n"
    status = dict(
        line.split(b":\t") for line in (await read_file(store, build, b"status")).splitlines()
    )
    assert {k: int(v, 16) for k, v in status.items()} == {
        b"CapInh": 0, b"CapPrm": 0, b"CapEff": 0, b"CapBnd": 0, b"CapAmb": 0, b"NoNewPrivs": 1,
    }  # fmt: skip
    assert await read_file(store, build, b"hostname") == b"localhost\n"
    assert await read_file(store, build, b"nofile") == b"1024\n"
