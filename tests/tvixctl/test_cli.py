"""``tvixctl`` end to end against a real tvixd on a unix socket (the dummy builder: the CLI is under test).

Output paths are checked against what real Nix computes for the same
attributes (``nix-instantiate``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from clients.tvixctl import main
from tests.conftest import require_tool
from tests.tvixctl.conftest import Served
from tests.tvixctl.helpers import Background, environment, tvixctl

pytestmark = pytest.mark.nix

STORE_PATH = re.compile(r"/nix/store/[0-9a-z]{32}-[^\s'\"]+")


def nix_paths(nix_file: Path, salt: str, *attrs: str) -> dict[str, tuple[str, str]]:
    """``attr -> (drv path, out path)`` as ``nix-instantiate`` gives them (one call)."""
    require_tool("nix-instantiate")
    expr = "[" + " ".join(f'(x.{a}.drvPath + " " + x.{a}.outPath)' for a in attrs) + "]"
    done = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E",
         f"let x = import {nix_file} {{ salt = \"{salt}\"; }}; in {expr}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    pairs = [tuple(item.split(" ")) for item in json.loads(done.stdout)]
    return {a: (p[0], p[1]) for a, p in zip(attrs, pairs, strict=True)}


def build(served: Served, salt: str, *args: str) -> subprocess.CompletedProcess[str]:
    return tvixctl(
        "build", "--socket", served.socket, str(served.nix_file), "--argstr", "salt", salt, *args
    )


def test_build_prints_outputs_progress_and_writes_the_result(
    served: Served, tmp_path: Path
) -> None:
    salt = served.salt()
    paths = nix_paths(served.nix_file, salt, "top", "leaf")
    result = tmp_path / "result"
    done = build(served, salt, "-A", "top", "-o", str(result))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [paths["top"][1]]
    # plain progress (stderr is not a terminal): no escapes, one line per step
    assert "\x1b" not in done.stderr
    assert f"building {paths['leaf'][0]}" in done.stderr
    assert f"leaf> dummy build of {paths['leaf'][1]}" in done.stderr
    assert f"built {paths['top'][0]}" in done.stderr
    assert "succeeded" in done.stderr
    assert "3 derivations: 3 built, 0 present" in done.stderr
    # -o: a real file (the dummy builder's output) with the store's mtime
    assert result.read_text() == f"dummy output {paths['top'][1]}\n"
    assert result.lstat().st_mtime == 1

    again = build(served, salt, "-A", "top", "-o", str(result))
    assert again.returncode == 0, again.stderr
    assert "1 derivation: 0 built, 1 present" in again.stderr  # answered by lookup
    assert result.read_text() == f"dummy output {paths['top'][1]}\n"  # the earlier result replaced

    mine = tmp_path / "mine"
    mine.write_text("precious")
    refused = build(served, salt, "-A", "top", "-o", str(mine))
    assert refused.returncode == 1
    assert f"{mine} already exists and is not an earlier tvixctl result" in refused.stderr
    assert mine.read_text() == "precious"


def test_result_names_for_several_derivations_and_outputs(served: Served, tmp_path: Path) -> None:
    salt = served.salt()
    paths = nix_paths(served.nix_file, salt, "top", "multi", "multi.dev")
    done = build(served, salt, "-A", "top", "-A", "multi", "-o", str(tmp_path / "r"), "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "succeeded"
    assert job["source"]["attr_paths"] == ["top", "multi"]
    assert job["source"]["args"] == {"salt": {"str": salt}}
    by_output = {(o["drv_path"], o["output"]): o["path"] for o in job["outputs"]}
    multi_drv = paths["multi"][0]
    assert by_output[(paths["top"][0], "out")] == paths["top"][1]
    assert by_output[(multi_drv, "out")] == paths["multi"][1]
    dev = by_output[(multi_drv, "dev")]
    assert dev == paths["multi.dev"][1]
    # nix-build's names; which root is "-2" follows the order the daemon lists them in (see
    # the report: Job.outputs follows evaluation order, not the order of -A)
    top, multi = paths["top"][1], paths["multi"][1]
    assert job["results"] in (
        {str(tmp_path / "r"): top, str(tmp_path / "r-2"): multi, str(tmp_path / "r-2-dev"): dev},
        {str(tmp_path / "r"): multi, str(tmp_path / "r-dev"): dev, str(tmp_path / "r-2"): top},
    )
    for written, store_path in job["results"].items():
        assert Path(written).read_text() == f"dummy output {store_path}\n"
    assert job["counts"]["done"] == 4  # leaf, mid, top, multi


def test_failure_names_the_derivation_and_its_log_tail(served: Served) -> None:
    salt = served.salt()
    paths = nix_paths(served.nix_file, salt, "broken")
    drv, out = paths["broken"]
    done = build(served, salt, "-A", "broken", "--json")
    assert done.returncode == 1
    assert f"error: building {drv} failed: " in done.stderr
    assert "dummy build failed on request: broken on purpose" in done.stderr
    assert f"> dummy build of {out}" in done.stderr  # the log tail
    assert f"tvixctl logs {drv}" in done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "failed"
    assert drv in job["error"]
    assert job["counts"]["failed"] == 1


def test_evaluation_error_is_nix_verbatim(served: Served, tmp_path: Path) -> None:
    bad = tmp_path / "bad.nix"
    bad.write_text("{ }: { x = undefinedThing; }\n")
    done = tvixctl("build", "--socket", served.socket, str(bad), "-A", "x")
    assert done.returncode == 1
    assert "undefined variable 'undefinedThing'" in done.stderr


def test_build_drv_paths(served: Served) -> None:
    salt = served.salt()
    paths = nix_paths(served.nix_file, salt, "mid")
    # instantiate it for real, so the .drv exists in /nix/store
    subprocess.run(
        ["nix-instantiate", str(served.nix_file), "-A", "mid", "--argstr", "salt", salt],
        check=True, capture_output=True,
    )  # fmt: skip
    done = tvixctl("build", "--socket", served.socket, paths["mid"][0])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [paths["mid"][1]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nix/store/" + "0" * 32 + "-x.drv", "default.nix"], "either one Nix file or .drv paths"),
        (["/nix/store/" + "0" * 32 + "-x.drv", "-A", "a"], "apply to a Nix file"),
        (["a.nix", "b.nix"], "give one Nix file, not 2"),
        (["/nonexistent/file.nix"], "/nonexistent/file.nix: no such Nix file"),
    ],
)
def test_usage_errors(served: Served, args: list[str], message: str) -> None:
    done = tvixctl("build", "--socket", served.socket, *args)
    assert done.returncode == 1
    assert message in done.stderr


def test_detach_status_cancel_watch_jobs(served: Served) -> None:
    salt = served.salt()
    submitted = build(served, salt, "-A", "slower", "--detach")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)

    status = tvixctl("status", "--socket", served.socket, "--json", job_id)
    assert json.loads(status.stdout)["state"] in ("queued", "evaluating", "realising")

    cancelled = tvixctl("cancel", "--socket", served.socket, job_id[:8])  # a prefix will do
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"job {job_id}: cancelled"
    again = tvixctl("cancel", "--socket", served.socket, job_id)
    assert "is already cancelled; nothing to cancel" in again.stdout

    watched = tvixctl("watch", "--socket", served.socket, "--json", job_id)
    assert watched.returncode == 1  # the job did not succeed
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "job_state"
    assert events[-1]["state"] == "cancelled"
    assert f"error: job {job_id} was cancelled" in watched.stderr

    text = tvixctl("status", "--socket", served.socket, job_id[:10]).stdout
    assert f"job {job_id}" in text
    assert "state:        cancelled" in text

    listed = tvixctl("jobs", "--socket", served.socket, "--json", "--state", "cancelled")
    jobs = json.loads(listed.stdout)
    assert job_id in [j["id"] for j in jobs]
    assert {j["state"] for j in jobs} == {"cancelled"}
    table = tvixctl("jobs", "--socket", served.socket).stdout.splitlines()
    assert table[0].split() == ["ID", "STATE", "CREATED", "DERIVATIONS", "SOURCE"]
    assert any(line.startswith(f"{job_id}  cancelled") for line in table)

    overall = json.loads(tvixctl("status", "--socket", served.socket, "--json").stdout)
    assert overall["socket"] == served.socket
    assert overall["jobs"]["cancelled"] >= 1

    unknown = tvixctl("watch", "--socket", served.socket, "f" * 32)
    assert unknown.returncode == 1
    assert "not found" in unknown.stderr


def test_logs_after_the_fact(served: Served) -> None:
    salt = served.salt()
    paths = nix_paths(served.nix_file, salt, "top")
    drv, out = paths["top"]
    assert build(served, salt, "-A", "top").returncode == 0
    logs = tvixctl("logs", "--socket", served.socket, drv)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == f"dummy build of {out}\n"
    as_json = tvixctl("logs", "--socket", served.socket, "--json", "-f", drv)  # done: -f ends
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"drv_path": drv, "attempt": 1, "line": f"dummy build of {out}"}
    ]
    never = "/nix/store/" + "1" * 32 + "-never.drv"
    missing = tvixctl("logs", "--socket", served.socket, never)
    assert missing.returncode == 1
    assert f"derivation {never} is not known to this daemon" in missing.stderr
    not_drv = tvixctl("logs", "--socket", served.socket, out)
    assert "is not a derivation (.drv) path" in not_drv.stderr


def test_ctrl_c_cancels_the_build(served: Served) -> None:
    salt = served.salt()
    process = Background(
        "build", "--socket", served.socket, str(served.nix_file), "-A", "slower",
        "--argstr", "salt", salt, "--json",
    )  # fmt: skip
    try:
        process.read_until(lambda lines: any(x.startswith("building ") for x in lines), "stderr")
        process.process.send_signal(signal.SIGINT)
        status, stdout, stderr = process.finish()
    finally:
        process.kill()
    assert status == 130, stderr
    assert "interrupted: cancelling job" in stderr
    job = json.loads(stdout)
    assert job["state"] == "cancelled"


@pytest.mark.parametrize(
    "command",
    [
        ["build", "x.nix"],
        ["jobs"],
        ["status"],
        ["status", "abc"],
        ["watch", "abc"],
        ["logs", "/nix/store/" + "0" * 32 + "-x.drv"],
        ["cancel", "abc"],
    ],
)
def test_no_daemon_names_the_socket_and_how_to_start_one(
    tmp_path: Path,
    command: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "x.nix").write_text("{ }")
    socket = tmp_path / "nobody-home.sock"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TVIXD_SOCKET", str(socket))  # the default --socket
    assert main(command) == 1
    message = capsys.readouterr().err
    assert f"cannot connect to tvixd at {socket}: No such file or directory" in message
    assert f"tvixd --listen unix:{socket}" in message
    assert "tvixctl build --embedded" in message


def test_no_daemon_from_a_subprocess_too(tmp_path: Path) -> None:
    socket = tmp_path / "nobody-home.sock"
    done = tvixctl("jobs", "--socket", str(socket))
    assert done.returncode == 1
    assert f"cannot connect to tvixd at {socket}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "command", [[], ["build"], ["jobs"], ["status"], ["watch"], ["logs"], ["cancel"], ["store"]]
)
def test_help_has_examples(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text
    assert "tvixctl " in text.split("examples:", 1)[1]
    if command and command != ["store"]:
        assert "--socket PATH" in text


def test_embedded_daemon_when_none_runs(tmp_path: Path, served: Served) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    state = tmp_path / "state"
    env = environment(XDG_RUNTIME_DIR=str(runtime), TVIXD_BUILD_SERVICE="dummy://")
    salt = served.salt()
    paths = nix_paths(served.nix_file, salt, "top")
    done = tvixctl(
        "build", "--socket", str(tmp_path / "none.sock"), "--embedded", "--state-dir", str(state),
        str(served.nix_file), "-A", "top", "--argstr", "salt", salt, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"starting an embedded tvixd with its state in {state}" in done.stderr
    assert done.stdout.split() == [paths["top"][1]]
    assert (state / "jobs.db").exists()  # its state persists
    assert list(runtime.iterdir()) == []  # its socket directory is gone ...
    assert not _processes_mentioning(str(state))  # ... and so is the daemon

    # with a daemon answering on the socket, --embedded starts nothing
    used = build(served, salt, "-A", "top", "--embedded")
    assert used.returncode == 0, used.stderr
    assert "embedded" not in used.stderr


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry))
    return found


def test_watch_reads_stdout_while_running(served: Served) -> None:
    """``watch --json`` streams events as they happen (not only at the end)."""
    salt = served.salt()
    job_id = build(served, salt, "-A", "slow", "--detach").stdout.strip()
    process = Background("watch", "--socket", served.socket, "--json", "--quiet", job_id)
    try:
        lines = process.read_until(lambda ls: any('"state": "build"' in line for line in ls))
        assert process.process.poll() is None  # still following
        assert json.loads(lines[0])["seq"] == 1
        status, stdout, _ = process.finish()
    finally:
        process.kill()
    assert status == 0
    assert json.loads(stdout.splitlines()[-1])["state"] == "succeeded"
