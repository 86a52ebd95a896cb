"""The pieces of tvixctl that need no daemon: defaults, result names, formats, the progress views."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from clients.tvixctl.common import default_socket, default_state_dir
from clients.tvixctl.coordinator import Reconnect, is_final
from clients.tvixctl.formats import drv_name, event_json, job_json, line_text
from clients.tvixctl.progress import LiveProgress, PlainProgress, choose_display
from clients.tvixctl.results import plan_results
from clients.tvixctl.tracker import Tracker
from proto.gen.tvixd import v1 as pb
from tvixd.config import load_config

ENVIRONMENTS = [
    {},
    {"XDG_RUNTIME_DIR": "/run/user/1000"},
    {"XDG_STATE_HOME": "/home/a/state"},
    {"TVIXD_STATE_DIR": "/srv/tvixd"},
    {"TVIXD_STATE_DIR": "/srv/tvixd", "XDG_RUNTIME_DIR": "/run/user/7"},
    {"HOME": "/home/b", "XDG_STATE_HOME": ""},
]


@pytest.mark.parametrize("is_root", [True, False])
@pytest.mark.parametrize("environ", ENVIRONMENTS)
def test_defaults_agree_with_the_daemon(
    environ: dict[str, str], is_root: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "HOME" in environ:
        monkeypatch.setenv("HOME", environ["HOME"])
    config = load_config(
        config_file=None, flags={}, environ=environ, is_root=is_root, cwd=Path("/")
    )
    assert default_state_dir(environ, is_root) == config.state_dir
    (listen,) = config.listen
    assert default_socket(environ, is_root) == str(listen.path)
    assert default_socket({**environ, "TVIXD_SOCKET": "/x.sock"}, is_root) == "/x.sock"


def _output(drv: str, name: str) -> pb.JobOutput:
    suffix = "" if name == "out" else f"-{name}"
    return pb.JobOutput(
        drv_path=f"/nix/store/{drv * 32}-{drv}.drv",
        output_name=name,
        path=f"/nix/store/{drv * 32}-{drv}{suffix}",
    )


def test_result_names_follow_nix_build() -> None:
    outputs = [_output("a", "out"), _output("b", "dev"), _output("b", "out"), _output("a", "doc")]
    links = plan_results(Path("/w/result"), outputs)
    assert [(str(link.dest), link.store_path) for link in links] == [
        ("/w/result", outputs[0].path),
        ("/w/result-2-dev", outputs[1].path),
        ("/w/result-2", outputs[2].path),
        ("/w/result-doc", outputs[3].path),
    ]


def test_formats() -> None:
    assert drv_name("/nix/store/" + "a" * 32 + "-hello-1.0.drv") == "hello-1.0"
    assert drv_name("weird") == "weird"
    assert line_text(b"caf\xc3\xa9 \xff\n") == "café \\xff"
    job = pb.Job(
        id="j1",
        state=pb.JobState.FAILED,
        request=pb.SubmitRequest(
            nix_file=pb.NixFile(
                path="/a.nix",
                attr_paths=["x"],
                args=[pb.NixArg(name="n", expr="1"), pb.NixArg(name="s", str="v")],
            ),
            keep_going=True,
        ),
        counts={"DERIVATION_STATE_DONE": 2, "DERIVATION_STATE_DEPENDENCY_FAILED": 1},
        error="boom",
        last_seq=9,
    )
    assert job_json(job) == {
        "id": "j1",
        "state": "failed",
        "source": {
            "nix_file": "/a.nix",
            "attr_paths": ["x"],
            "args": {"n": {"expr": "1"}, "s": {"str": "v"}},
        },
        "keep_going": True,
        "created_unix_ms": 0,
        "updated_unix_ms": 0,
        "counts": {"dependency_failed": 1, "done": 2},
        "outputs": [],
        "error": "boom",
        "last_seq": 9,
    }


def test_reconnect_delays_double_up_to_the_cap() -> None:
    delays = list(itertools.islice(Reconnect(first_delay=0.1, max_delay=0.5).delays(), 5))
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


DRVS = {
    name: f"/nix/store/{c * 32}-{name}.drv"
    for c, name in zip("abc", ["leaf", "mid", "top"], strict=True)
}


def _events() -> list[pb.JobEvent]:
    """A job: evaluated, leaf present, mid built (with a log line), top failing."""
    seq = itertools.count(1)

    def job(state: pb.JobState, error: str = "") -> pb.JobEvent:
        n = next(seq)
        body = pb.JobStateChanged(state=state, error=error)
        return pb.JobEvent(seq=n, job_id="j", time_unix_ms=1000 * n, job_state=body)

    def drv(name: str, state: pb.DerivationState, detail: str = "") -> pb.JobEvent:
        n = next(seq)
        body = pb.DerivationStateChanged(drv_path=DRVS[name], state=state, attempt=1, detail=detail)
        return pb.JobEvent(seq=n, job_id="j", time_unix_ms=1000 * n, derivation_state=body)

    def log(name: str, line: bytes) -> pb.JobEvent:
        n = next(seq)
        body = pb.LogLine(drv_path=DRVS[name], line=line, attempt=1)
        return pb.JobEvent(seq=n, job_id="j", time_unix_ms=1000 * n, log=body)

    d = pb.DerivationState
    return [
        job(pb.JobState.QUEUED),
        job(pb.JobState.EVALUATING),
        *(drv(name, d.LOOKUP) for name in DRVS),
        job(pb.JobState.REALISING),
        drv("leaf", d.DONE),
        drv("mid", d.WAITING),
        drv("top", d.WAITING),
        drv("mid", d.BUILD),
        log("mid", b"compiling \x1b[31mred\x1b[0m " + ("é" * 80).encode()),
        drv("mid", d.PUSH),
        drv("mid", d.DONE),
        drv("top", d.BUILD),
        drv("top", d.FAILED, "exit code 2"),
        job(pb.JobState.FAILED, f"{DRVS['top']}: exit code 2"),
    ]


def test_tracker_and_plain_progress() -> None:
    out = io.StringIO()
    tracker, plain = Tracker("j"), PlainProgress(out)
    events = _events()
    for event in events:
        tracker.apply(event)
        plain.event(tracker, event)
    assert tracker.final
    assert tracker.last_seq == len(events)
    assert tracker.groups() == {"done": 2, "building": 0, "waiting": 0, "failed": 1}
    assert tracker.summary() == "3 derivations: 1 built, 1 present, 1 failed"
    assert [e for e in events if is_final(e)] == [events[-1]]
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["job j: queued", "job j: evaluating", "job j: realising"]
    assert f"building {DRVS['mid']}" in lines
    assert f"built {DRVS['mid']}" in lines
    assert f"failed {DRVS['top']}: exit code 2" in lines
    assert any(line.startswith("mid> compiling ") for line in lines)
    assert lines[-1].startswith("job j failed after ")
    assert event_json(events[10])["line"].startswith("compiling \x1b[31mred")


class _CountingIO(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


@pytest.mark.asyncio
async def test_plain_progress_flushes_a_batch_of_events_once() -> None:
    out = _CountingIO()
    tracker, plain = Tracker("j"), PlainProgress(out)
    events = _events()
    for event in events[:5]:  # one batch: handled in one turn of the event loop
        tracker.apply(event)
        plain.event(tracker, event)
    assert out.flushes == 0
    await anyio.lowlevel.checkpoint()
    assert out.flushes == 1
    assert out.getvalue().splitlines()[:2] == ["job j: queued", "job j: evaluating"]
    for event in events[5:]:
        tracker.apply(event)
        plain.event(tracker, event)
    plain.close(tracker)  # flushes what is pending at once
    assert out.flushes == 2
    assert out.getvalue().splitlines()[-1].startswith("job j failed after ")


def test_live_block_fits_the_terminal_and_shows_running_logs() -> None:
    out = io.StringIO()
    live = LiveProgress(out, width=40)
    tracker = Tracker("j")
    for event in _events()[:11]:  # mid is building and has logged a line
        tracker.apply(event)
        live.event(tracker, event)
    block = live.block(tracker, 40)
    assert block[0].startswith("1 done | 1 building | 1 waiting | ")  # StringIO: no UTF-8
    assert "[mid]" in block[0] or block[0].endswith("…")
    assert block[1].startswith("mid> compiling red ")  # escapes removed
    assert all(len(line) <= 39 for line in block)
    live.redraw()
    live.redraw()
    drawn = out.getvalue()
    assert drawn.count("\x1b[2F\x1b[J") == 1  # the second draw replaced the first block
    live.close(tracker)
    assert out.getvalue().endswith("\x1b[2F\x1b[J")  # the block is erased at the end


def test_choose_display_is_plain_off_a_terminal(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as f:
        assert isinstance(choose_display(f), PlainProgress)
        assert isinstance(choose_display(f, live=True), LiveProgress)
