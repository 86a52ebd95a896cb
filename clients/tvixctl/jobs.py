"""``tvixctl jobs | status | watch | logs | cancel``: look at and steer the daemon's jobs.

A ``JOB`` argument is a job id or an unambiguous prefix of one (as
``tvixctl jobs`` shows them).  ``--json`` output shapes are described in
:mod:`clients.tvixctl.formats`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio.to_thread

from clients.tvixctl.common import EXIT_FAILED, CommandError
from clients.tvixctl.coordinator import CoordinatorClient, NotFoundError, Reconnect
from clients.tvixctl.follow import follow_build_log, follow_job, report_failure
from clients.tvixctl.formats import (
    counts_of,
    counts_text,
    job_json,
    job_row,
    job_state_name,
    line_text,
    source_text,
)
from clients.tvixctl.progress import Display, SilentProgress, choose_display
from proto.gen.tvixd import v1 as pb

__all__ = ["register", "resolve_job"]

ID_LENGTH = 32
_STATES = [s.name.lower() for s in pb.JobState if s != pb.JobState.UNSPECIFIED]


async def resolve_job(client: CoordinatorClient, text: str) -> Any:
    """The job whose id is ``text`` or starts with it (unambiguously)."""
    try:
        return await client.get_job(text)
    except NotFoundError:
        if not text or len(text) >= ID_LENGTH:
            raise
    matches = [job for job in await client.list_jobs() if job.id.startswith(text)]
    if not matches:
        raise NotFoundError(f"no job has an id starting with {text!r}")
    if len(matches) > 1:
        ids = ", ".join(job.id for job in matches[:5])
        raise CommandError(f"{text!r} is ambiguous: it starts {len(matches)} job ids ({ids} ...)")
    return matches[0]


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return int(text)


def _emit(data: Any) -> None:
    print(json.dumps(data, indent=2), flush=True)


async def cmd_jobs(args: argparse.Namespace) -> int:
    states = [pb.JobState[s.upper()] for s in args.state or []]
    async with CoordinatorClient(args.socket) as client:
        jobs = await client.list_jobs(states)
    shown = jobs if args.limit == 0 else jobs[: args.limit]
    if args.json:
        _emit([job_json(job) for job in shown])
        return 0
    if not jobs:
        print("no jobs", file=sys.stderr)
        return 0
    rows = [("ID", "STATE", "CREATED", "DERIVATIONS", "SOURCE"), *map(job_row, shown)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[4]]))
    if len(shown) < len(jobs):
        print(
            f"({len(jobs) - len(shown)} older jobs not shown; --limit 0 shows all)", file=sys.stderr
        )
    return 0


def _job_text(job: Any) -> str:
    counts = counts_text(job)
    lines = [
        f"job {job.id}",
        f"  state:        {job_state_name(job.state)}",
        f"  source:       {source_text(job.request)}"
        + ("  (--keep-going)" if job.request.keep_going else ""),
        f"  derivations:  {counts}",
    ]
    if job.outputs:
        lines.append("  outputs:")
        lines += [f"    {o.path}  ({o.output_name} of {o.drv_path})" for o in job.outputs]
    if job.error:
        lines.append("  error:        " + job.error.replace("\n", "\n                "))
    return "\n".join(lines)


async def cmd_status(args: argparse.Namespace) -> int:
    async with CoordinatorClient(args.socket) as client:
        if args.job:
            job = await resolve_job(client, args.job)
            if args.json:
                _emit(job_json(job))
            else:
                print(_job_text(job))
            return 0
        jobs = await client.list_jobs()
    per_state: dict[str, int] = {}
    derivations: dict[str, int] = {}
    for job in jobs:
        state = job_state_name(job.state)
        per_state[state] = per_state.get(state, 0) + 1
        if job.state not in (pb.JobState.SUCCEEDED, pb.JobState.FAILED, pb.JobState.CANCELLED):
            for drv_state, n in counts_of(job).items():
                derivations[drv_state] = derivations.get(drv_state, 0) + n
    if args.json:
        _emit({"socket": args.socket, "jobs": per_state, "derivations": derivations})
        return 0
    print(f"tvixd at {args.socket}")
    print("jobs:        " + (", ".join(f"{n} {s}" for s, n in per_state.items()) or "none"))
    running = ", ".join(f"{n} {s}" for s, n in derivations.items()) or "none"
    print(f"derivations of unfinished jobs: {running}")
    return 0


async def cmd_watch(args: argparse.Namespace) -> int:
    async with CoordinatorClient(args.socket) as client:
        job = await resolve_job(client, args.job)
        display: Display = SilentProgress() if args.quiet else choose_display(sys.stderr)
        tracker = await follow_job(
            client,
            job.id,
            display,
            from_seq=args.from_seq,
            reconnect=Reconnect(args.reconnect_timeout),
            events_out=sys.stdout if args.json else None,
        )
        final = await client.get_job(job.id)
        if final.state == pb.JobState.SUCCEEDED:
            if not args.json:
                for output in final.outputs:
                    print(output.path)
            return 0
        await report_failure(client, final, tracker)
        return EXIT_FAILED


def _notice(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def cmd_logs(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    async with CoordinatorClient(args.socket) as client:
        if args.follow:  # resumed after a dropped connection, each line printed once
            lines = follow_build_log(
                client, args.drv, reconnect=Reconnect(args.reconnect_timeout), notice=_notice
            )
        else:
            lines = client.follow_log(args.drv, follow=False)
        async for line in lines:
            if args.json:
                data = {"drv_path": line.drv_path, "attempt": int(line.attempt)}
                data["line"] = line_text(line.line)
                text = (json.dumps(data) + "\n").encode()
            else:
                text = bytes(line.line).rstrip(b"\n") + b"\n"
            await anyio.to_thread.run_sync(out.write, text)
            await anyio.to_thread.run_sync(out.flush)
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    async with CoordinatorClient(args.socket) as client:
        job = await resolve_job(client, args.job)
        before = job.state
        job = await client.cancel(job.id)
    if args.json:
        _emit(job_json(job))
    elif before in (pb.JobState.SUCCEEDED, pb.JobState.FAILED, pb.JobState.CANCELLED):
        print(f"job {job.id} is already {job_state_name(before)}; nothing to cancel")
    else:
        print(f"job {job.id}: {job_state_name(job.state)}")
    return 0


def register(commands: Any, parents: list[argparse.ArgumentParser], runner: Any) -> None:
    """Add ``jobs``, ``status``, ``watch``, ``logs`` and ``cancel`` to the top-level subparsers."""
    raw = argparse.RawDescriptionHelpFormatter

    def add(name: str, command: Any, help: str, examples: list[str]) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(
            name,
            parents=parents,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog="examples:\n" + "".join(f"  {e}\n" for e in examples),
            formatter_class=raw,
        )
        sub.set_defaults(run=runner(command))
        return sub

    sub = add(
        "jobs",
        cmd_jobs,
        "list the daemon's jobs, newest first",
        ["tvixctl jobs", "tvixctl jobs --state realising --state queued",
         "tvixctl jobs --json --limit 0 | jq -r '.[] | select(.state == \"failed\") | .id'"],
    )  # fmt: skip
    sub.add_argument("--state", action="append", choices=_STATES, help="only jobs in STATE")
    sub.add_argument(
        "-n",
        "--limit",
        type=_count,
        default=20,
        metavar="N",
        help="show at most N jobs; 0: all (default 20)",
    )
    sub.add_argument("--json", action="store_true", help="a JSON list of jobs")

    sub = add(
        "status",
        cmd_status,
        "count jobs per state (and the derivations of unfinished jobs), or show one job",
        ["tvixctl status", "tvixctl status 572fc6c7", "tvixctl status --json 572fc6c7"],
    )
    sub.add_argument("job", nargs="?", metavar="JOB", help="a job id (or a unique prefix)")
    sub.add_argument("--json", action="store_true", help="JSON output")

    sub = add(
        "watch",
        cmd_watch,
        "follow a job to its end (again after a dropped connection); exit 0 if it succeeded",
        ["tvixctl watch 572fc6c7", "tvixctl watch --json 572fc6c7 > events.jsonl"],
    )
    sub.add_argument("job", metavar="JOB", help="a job id (or a unique prefix)")
    sub.add_argument("--json", action="store_true", help="print every event as a JSON line")
    sub.add_argument(
        "--from-seq", type=_count, default=0, metavar="N", help="only events after number N"
    )
    sub.add_argument("-q", "--quiet", action="store_true", help="show no progress")
    sub.add_argument(
        "--reconnect-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to keep trying when the connection drops (default %(default)g)",
    )

    sub = add(
        "logs",
        cmd_logs,
        "print the build log of a derivation (what is stored; with -f, live lines too, "
        "again after a dropped connection)",
        ["tvixctl logs /nix/store/<hash>-hello.drv", "tvixctl logs -f /nix/store/<hash>-hello.drv"],
    )
    sub.add_argument("drv", metavar="DRV", help="the /nix/store/...drv path")
    sub.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until its build ends"
    )
    sub.add_argument("--json", action="store_true", help="one JSON object per line")
    sub.add_argument(
        "--reconnect-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="with -f: how long to keep trying when the connection drops (default %(default)g)",
    )

    sub = add(
        "cancel",
        cmd_cancel,
        "cancel a job; builds no other job needs are stopped",
        ["tvixctl cancel 572fc6c7"],
    )
    sub.add_argument("job", metavar="JOB", help="a job id (or a unique prefix)")
    sub.add_argument("--json", action="store_true", help="print the job afterwards as JSON")
