"""The real tvixd (real coordinator, real nix-instantiate, dummy builder): a job over its socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from grpclib.client import Channel

from clients.store.grpc import GrpcPathInfoService
from nixcompat.storepath import StorePath
from proto.gen.tvixd import v1 as tvixd_pb
from tests.conftest import require_tool
from tests.daemon.conftest import NotifySocket
from tests.daemon.test_process import MEMORY, ROOT, environment, launched, wait_exit

PROJECT = """\
let
  mk = attrs: derivation ({ system = "x86_64-linux"; builder = "/bin/sh"; } // attrs);
  dep = mk { name = "dep"; src = builtins.toFile "src.txt" "hello"; };
in { top = mk { name = "top"; inherit dep; }; }
"""


async def run_job(socket: Path, nix_file: Path) -> tvixd_pb.Job:
    """Submit ``top`` of ``nix_file`` and follow the job to its end."""
    channel = Channel(path=str(socket))
    try:
        stub = tvixd_pb.CoordinatorStub(channel)
        request = tvixd_pb.SubmitRequest(
            nix_file=tvixd_pb.NixFile(path=str(nix_file), attr_paths=["top"])
        )
        job = await stub.submit(request, timeout=30)
        with anyio.fail_after(60):
            async for _ in stub.watch(tvixd_pb.WatchRequest(job_id=job.id, follow=True)):
                pass
        return await stub.get_job(tvixd_pb.GetJobRequest(id=job.id), timeout=30)
    finally:
        channel.close()


@pytest.mark.asyncio
async def test_tvixd_builds_a_job_and_stops_on_sigterm(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    require_tool("nix-instantiate")
    nix_file = tmp_path / "project.nix"
    await anyio.Path(nix_file).write_text(PROJECT)
    sock = tmp_path / "run" / "tvixd.sock"
    argv = [sys.executable, "-m", "tvixd.main", "--listen", f"unix:{sock}"]
    flags = ["--state-dir", str(tmp_path / "state"), *MEMORY, "--log-format", "json"]
    with launched([*argv, *flags], environment(notify_socket)) as process:
        await notify_socket.wait_for("READY=1")
        job = await run_job(sock, nix_file)
        assert job.state == tvixd_pb.JobState.SUCCEEDED, job.error
        outputs = {output.drv_path.rpartition("-")[2]: output.path for output in job.outputs}
        assert set(outputs) == {"top.drv"}
        pathinfos = GrpcPathInfoService.from_url(f"grpc+unix://{sock}")
        try:  # the output was pushed into the daemon's path-info service
            top = StorePath.from_absolute_path(outputs["top.drv"])
            info = await pathinfos.get(top.digest)
            assert info is not None
            assert info.store_path == top
        finally:
            await pathinfos.close()
        process.send_signal(signal.SIGTERM)
        status, stderr = await wait_exit(process, 30)
    assert status == 0, stderr
    assert (tmp_path / "state" / "jobs.db").exists()
    assert not sock.exists()
    lines = notify_socket.lines()
    assert lines.index("READY=1") < lines.index("STOPPING=1")


def test_entry_point_bad_config() -> None:
    """The installed ``tvixd`` script (not only ``python -m``) exits 2 on a bad config."""
    tvixd = Path(sys.executable).parent / "tvixd"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TVIXD_")}
    env["TVIXD_MAX_JOBS"] = "zero"
    result = subprocess.run(
        [str(tvixd), "--check-config"], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "environment variable TVIXD_MAX_JOBS: expected a positive integer, got 'zero'" in (
        result.stderr
    )
