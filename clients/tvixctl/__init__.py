"""The ``tvixctl`` command: talk to a tvixd daemon over its unix socket (gRPC).

``clients.tvixctl:main`` is the entry point.  Commands live in their own
modules and register themselves with :func:`build_parser`:

* ``tvixctl build`` — :mod:`clients.tvixctl.build` (with ``--embedded``,
  :mod:`clients.tvixctl.embedded`; progress: :mod:`clients.tvixctl.progress`;
  ``-o``: :mod:`clients.tvixctl.results`);
* ``tvixctl jobs | status | watch | logs | cancel`` —
  :mod:`clients.tvixctl.jobs`, over :mod:`clients.tvixctl.coordinator`;
* ``tvixctl store …`` — :mod:`clients.tvixctl.store_cli` (its command line)
  and :mod:`clients.tvixctl.store` (import, export, ls, cat, path-info, nar,
  verify; loaded only when one of them runs).

Every command takes ``--socket PATH`` (default: ``$TVIXD_SOCKET`` or the
socket tvixd listens on by default, :func:`clients.tvixctl.common.default_socket`).

Exit codes: 0 success, 1 the operation or the job failed (message on
stderr), 2 bad usage, 130 interrupted (Ctrl-C; ``build`` cancels its job).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from clients.tvixctl import build, jobs, store_cli
from clients.tvixctl.common import add_common, runner

__all__ = ["build_parser", "main"]

EXAMPLES = """\
examples:
  tvixctl build examples/demo.nix -o result   # build through the daemon, output in ./result
  tvixctl build --embedded examples/demo.nix  # no daemon running: start one for this build
  tvixctl jobs                                # the newest jobs
  tvixctl status                              # jobs per state
  tvixctl watch 572fc6c7                      # follow a job (by id or id prefix)
  tvixctl logs /nix/store/<hash>-hello.drv    # a derivation's build log
  tvixctl cancel 572fc6c7
  tvixctl store ls /nix/store/<hash>-hello    # the store: import, export, ls, cat, ...

The daemon: 'tvixd --listen unix:PATH' (see docs/daemon.md), or its systemd units.
Run 'tvixctl COMMAND --help' for a command's options and examples.
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # only for --version: slow

    try:
        return version("tvixd")
    except PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"tvixctl {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, with every command registered."""
    parser = argparse.ArgumentParser(
        prog="tvixctl",
        description="Build with, and look into, a tvixd daemon over its unix socket.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    add_common(common)
    build.register(commands, [common], runner)
    jobs.register(commands, [common], runner)
    store_cli.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return the exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
