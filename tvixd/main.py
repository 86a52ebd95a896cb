"""The ``tvixd`` command: parse the configuration, set up logging, run the daemon.

Exit status: 0 after a clean stop, 1 when the daemon failed at runtime (a
socket already in use, a backend that cannot be opened), 2 for bad usage or
configuration (the message names the bad key or value).  See docs/daemon.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import uvloop

from tvixd.config import SETTINGS, Config, ConfigError, load_config
from tvixd.daemon import CoordinatorFactory, Daemon, ServicersFactory
from tvixd.logging import setup_logging
from tvixd.systemd import SystemdError, take_environment

__all__ = ["build_parser", "main", "render_config"]

log = logging.getLogger("tvixd")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: ``--config``, one flag per setting, ``--check-config``."""
    parser = argparse.ArgumentParser(
        prog="tvixd",
        description="tvixd: a Nix build daemon and Tvix-compatible store and builder.",
        epilog="Settings are taken from the flags, then TVIXD_* environment variables, then "
        "the config file, then the defaults; see docs/daemon.md.",
    )
    parser.add_argument("--version", action="version", version=f"tvixd {version('tvixd')}")
    parser.add_argument("--config", type=Path, metavar="PATH", help="TOML config file")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="print the resolved configuration and exit (0 if it is valid)",
    )
    for setting in SETTINGS:
        parser.add_argument(
            setting.flag,
            dest=setting.key.replace(".", "__"),
            action="append" if setting.repeatable else "store",
            metavar="VALUE",
            help=f"{setting.help} [{setting.env}]",
        )
    return parser


def render_config(config: Config) -> str:
    """The resolved configuration as TOML (a valid ``--config`` file)."""
    top: dict[str, object] = {
        "state_dir": str(config.state_dir),
        "listen": [str(a) for a in config.listen],
        "journal": str(config.journal),
        "max_jobs": config.max_jobs,
        "shutdown_grace": config.shutdown_grace,
        "socket_mode": f"{config.socket_mode:04o}",
        "socket_group": config.socket_group,
        "signing_key_file": str(config.signing_key_file) if config.signing_key_file else None,
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in top.items() if value is not None]
    lines.append("[services]")
    lines += [f"{key} = {json.dumps(value)}" for key, value in vars(config.services).items()]
    lines.append("[log]")
    lines += [f"{key} = {json.dumps(value)}" for key, value in vars(config.log).items()]
    return "\n".join(lines)


def _error(message: str) -> int:
    print(f"tvixd: {message}", file=sys.stderr)
    return 2


def main(
    argv: list[str] | None = None,
    *,
    coordinator: CoordinatorFactory | None = None,
    coordinator_servicers: ServicersFactory | None = None,
) -> int:
    """Run tvixd; the exit status (see the module docstring).

    ``coordinator`` / ``coordinator_servicers`` replace the real coordinator
    (tests only).
    """
    args = build_parser().parse_args(argv)
    systemd_env = take_environment(os.environ)
    flags: dict[str, Any] = {}
    for setting in SETTINGS:
        value = getattr(args, setting.key.replace(".", "__"))
        if value is not None:
            flags[setting.key] = value
    try:
        config = load_config(
            config_file=args.config,
            flags=flags,
            environ=os.environ,
            is_root=os.geteuid() == 0,
            cwd=Path.cwd(),
        )
    except ConfigError as exc:
        return _error(str(exc))
    if args.check_config:
        print(render_config(config))
        return 0
    setup_logging(config.log.level, config.log.format)
    status = 0
    try:
        daemon = Daemon(
            config,
            systemd_env=systemd_env,
            coordinator=coordinator,
            coordinator_servicers=coordinator_servicers,
        )
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(daemon.run(handle_signals=True))
    except* (ConfigError, SystemdError) as group:
        status = _error("; ".join(str(e) for e in group.exceptions))
    except* Exception as group:
        for failure in group.exceptions:
            log.error("tvixd failed: %s", failure, exc_info=failure)
        status = 1
    if status == 0:
        log.info("tvixd stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
