"""``tvixctl build``: submit a Nix file or ``.drv`` paths to tvixd, follow the job, print the outputs.

Progress goes to stderr (a live view on a terminal, lines otherwise), the
output paths to stdout, one per line (with ``--json``: the final job as
JSON, see :mod:`clients.tvixctl.formats`).  The exit status is 0 when the
job succeeded, 1 when it failed or was cancelled — with the failing
derivation and the tail of its log on stderr — and 130 after Ctrl-C (or
SIGTERM), which cancels the job (a second one stops waiting for that).  ``--detach``
only submits and prints the job id.

``--embedded``: when no daemon answers on the socket, start one for the
duration of the command (:mod:`clients.tvixctl.embedded`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from clients.tvixctl.common import EXIT_FAILED, EXIT_INTERRUPTED, CommandError, default_state_dir
from clients.tvixctl.coordinator import CoordinatorClient, Reconnect, probe
from clients.tvixctl.embedded import embedded_daemon
from clients.tvixctl.follow import follow_job, report_failure
from clients.tvixctl.formats import job_json
from clients.tvixctl.progress import Display, SilentProgress, choose_display
from clients.tvixctl.results import check_destination, export_results, plan_results
from proto.gen.tvixd import v1 as pb

__all__ = ["EXAMPLES", "build_request", "cmd_build"]

EXAMPLES = """\
examples:
  tvixctl build examples/demo.nix -o result       # build, write the output to ./result
  tvixctl build ./release.nix -A hello -A tests --keep-going
  tvixctl build default.nix --argstr version 1.2 --arg debug true
  tvixctl build /nix/store/<hash>-hello.drv       # realise derivations already instantiated
  tvixctl build --json demo.nix | jq -r '.outputs[].path'
  tvixctl build --detach demo.nix                  # print the job id; follow with 'tvixctl watch'
  tvixctl build --embedded examples/demo.nix       # no daemon running? start one for this build

Nix files are evaluated by the daemon, on this machine: paths are absolute.
"""


def _is_drv(text: str) -> bool:
    return text.endswith(".drv") and os.path.realpath(text).startswith("/nix/store/")


def build_request(args: argparse.Namespace) -> Any:
    """The ``SubmitRequest`` for the command line; ``CommandError`` for a contradictory one."""
    targets: list[str] = args.targets or ["default.nix"]
    drvs = [t for t in targets if _is_drv(t)]
    if drvs:
        if len(drvs) != len(targets):
            raise CommandError("give either one Nix file or .drv paths, not both")
        if args.attr or args.arg or args.argstr:
            raise CommandError("-A, --arg and --argstr apply to a Nix file, not to .drv paths")
        paths = [os.path.realpath(d) for d in drvs]
        return pb.SubmitRequest(drv_paths=pb.DrvPaths(paths=paths), keep_going=args.keep_going)
    if len(targets) != 1:
        raise CommandError(f"give one Nix file, not {len(targets)}: {' '.join(targets)}")
    path = Path(os.path.abspath(targets[0]))
    if path.is_dir():
        path = path / "default.nix"
    if not path.is_file():
        raise CommandError(f"{path}: no such Nix file")
    nix_args = [pb.NixArg(name=name, expr=expr) for name, expr in args.arg or []]
    nix_args += [pb.NixArg(name=name, str=value) for name, value in args.argstr or []]
    nix = pb.NixFile(path=str(path), attr_paths=list(args.attr or []), args=nix_args)
    return pb.SubmitRequest(nix_file=nix, keep_going=args.keep_going)


async def _interrupts(
    client: CoordinatorClient,
    job_id: str,
    display: Display,
    scope: anyio.CancelScope,
    asked: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """First SIGINT/SIGTERM: cancel the job (the watch then sees it end); set ``asked``.
    Second: stop waiting (cancel ``scope``)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            if asked.is_set():
                scope.cancel()
                return
            asked.set()
            display.notice(f"tvixctl: interrupted: cancelling job {job_id} (again to stop waiting)")
            try:
                await client.cancel(job_id)
            except CommandError as exc:
                display.notice(f"tvixctl: cannot cancel job {job_id}: {exc}")


async def _run(args: argparse.Namespace, socket: str, request: Any) -> int:
    async with CoordinatorClient(socket) as client:
        job = await client.submit(request)
        if args.detach:
            print(json.dumps(job_json(job)) if args.json else job.id, flush=True)
            return 0
        display: Display = SilentProgress() if args.quiet else choose_display(sys.stderr)
        asked, watching = anyio.Event(), anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            await tg.start(_interrupts, client, job.id, display, watching, asked)
            with watching:
                tracker = await follow_job(
                    client, job.id, display, reconnect=Reconnect(args.reconnect_timeout)
                )
            tg.cancel_scope.cancel()
        if watching.cancelled_caught:
            print(f"tvixctl: stopped waiting for job {job.id}", file=sys.stderr)
            return EXIT_INTERRUPTED
        final = await client.get_job(job.id)
        if final.state != pb.JobState.SUCCEEDED:
            await report_failure(client, final, tracker)
            if args.json:
                print(json.dumps(job_json(final)), flush=True)
            return EXIT_INTERRUPTED if asked.is_set() else EXIT_FAILED
    links = plan_results(args.out_link, final.outputs) if args.out_link else []
    if links:
        await export_results(socket, links)
    if args.json:
        data = job_json(final)
        data["results"] = {str(link.dest): link.store_path for link in links}
        print(json.dumps(data), flush=True)
    else:
        for output in final.outputs:
            print(output.path, flush=True)
        for link in links:
            print(f"wrote {link.store_path} to {link.dest}", file=sys.stderr)
    return 0


async def cmd_build(args: argparse.Namespace) -> int:
    request = await anyio.to_thread.run_sync(build_request, args)
    if args.out_link is not None:
        args.out_link = Path(os.path.abspath(args.out_link))  # noqa: ASYNC240  # no I/O
        await anyio.to_thread.run_sync(check_destination, args.out_link)
    unreachable = await probe(args.socket)
    if unreachable is None:
        return await _run(args, args.socket, request)
    if not args.embedded:
        raise unreachable
    if args.detach:
        raise CommandError(
            f"{unreachable}\n(--detach cannot use --embedded: that daemon stops when tvixctl exits)"
        )
    state = args.state_dir or default_state_dir()
    print(
        f"tvixctl: no daemon at {args.socket} ({unreachable.reason}); "
        f"starting an embedded tvixd with its state in {state}",
        file=sys.stderr,
    )
    async with embedded_daemon(args.state_dir) as daemon:
        return await _run(args, daemon.socket, request)


def register(commands: Any, parents: list[argparse.ArgumentParser], runner: Any) -> None:
    """Add ``build`` to the top-level subparsers."""
    sub: argparse.ArgumentParser = commands.add_parser(
        "build",
        parents=parents,
        help="build a Nix file's derivations (or .drv paths) through tvixd",
        description="Evaluate a Nix file (or take .drv paths), build what is missing through "
        "tvixd, show progress, print the output paths.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument(
        "targets",
        nargs="*",
        metavar="FILE.nix|DRV",
        help="a Nix file (or a directory with default.nix; default ./default.nix), "
        "or /nix/store/...drv paths",
    )
    sub.add_argument(
        "-A", "--attr", action="append", metavar="ATTR", help="attribute path to build (repeatable)"
    )
    sub.add_argument(
        "--arg", nargs=2, action="append", metavar=("NAME", "EXPR"), help="pass a Nix expression"
    )
    sub.add_argument(
        "--argstr", nargs=2, action="append", metavar=("NAME", "VALUE"), help="pass a string"
    )
    sub.add_argument(
        "-o",
        "--out-link",
        metavar="PATH",
        help="write the outputs to PATH (PATH-dev, PATH-2, ... for more); an earlier result "
        "there is replaced",
    )
    sub.add_argument(
        "-k", "--keep-going", action="store_true", help="build what does not depend on a failure"
    )
    sub.add_argument("--json", action="store_true", help="print the final job as JSON on stdout")
    sub.add_argument("-q", "--quiet", action="store_true", help="show no progress")
    sub.add_argument("--detach", action="store_true", help="only submit: print the job id and exit")
    sub.add_argument(
        "--embedded",
        action="store_true",
        help="when no daemon answers on the socket, start tvixd for this build",
    )
    sub.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="state directory of the embedded daemon (default: tvixd's, so results persist)",
    )
    sub.add_argument(
        "--reconnect-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to keep trying when the connection drops (default %(default)g)",
    )
    sub.set_defaults(run=runner(cmd_build))
