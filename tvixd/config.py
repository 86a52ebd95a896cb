"""The daemon's configuration: defaults ← TOML file ← ``TVIXD_*`` environment ← command-line flags.

Every setting has one name, used (with ``-`` for ``_``) as the flag, upper-cased
with ``TVIXD_`` as the environment variable, and as the key in the TOML file
(service URLs in a ``[services]`` table, logging in ``[log]``)::

    state_dir = "/var/lib/tvixd"
    listen = ["systemd", "127.0.0.1:9000"]
    max_jobs = 4
    shutdown_grace = 30.0
    signing_key_file = "/etc/tvixd/signing.key"

    [services]
    blob_service = "objectstore+file:///var/lib/tvixd/blobs"
    evaluator = "nix://"

    [log]
    level = "info"
    format = "json"

:class:`Config` is the validated result (frozen; not the live services, which
:mod:`tvixd.daemon` builds from it).  Unknown keys, wrong types and bad values
raise :class:`ConfigError` naming where the value came from (file and key,
variable or flag) and the value.  Relative paths are resolved against the
config file's directory (file values) or the working directory (flags and
environment).  Unknown ``TVIXD_*`` variables are ignored (``tvixctl`` shares
the prefix).
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, cast

__all__ = [
    "SETTINGS",
    "Config",
    "ConfigError",
    "ListenAddress",
    "LogConfig",
    "ServicesConfig",
    "Setting",
    "default_socket",
    "default_state_dir",
    "load_config",
]

T = TypeVar("T")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or invalid; the message names it."""


@dataclass(frozen=True)
class ListenAddress:
    """Where to listen: ``unix:/abs/path``, ``host:port`` (``[v6]:port``) or ``systemd``.

    ``systemd`` means the sockets systemd passes (socket activation).
    """

    kind: Literal["unix", "tcp", "systemd"]
    path: Path | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str, where: str = "listen") -> ListenAddress:
        """Parse one ``--listen`` value; ConfigError naming ``where`` and the value."""
        if text == "systemd":
            return cls("systemd")
        if text.startswith("unix:"):
            path = text[len("unix:") :]
            if not path.startswith("/") or path.endswith("/"):
                raise ConfigError(f"{where}: {text!r} needs an absolute socket path (unix:/path)")
            return cls("unix", path=Path(path))
        host, sep, port = text.rpartition(":")
        if sep and host and port.isdigit() and int(port) < 65536:
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
                try:
                    ipaddress.IPv6Address(host)
                except ValueError:
                    raise ConfigError(f"{where}: {text!r} has an invalid IPv6 address") from None
            elif ":" in host:
                raise ConfigError(f"{where}: {text!r}: write IPv6 addresses as [addr]:port")
            return cls("tcp", host=host, port=int(port))
        raise ConfigError(
            f"{where}: {text!r} is not a listen address "
            "(expected unix:/absolute/path, host:port, [ipv6]:port or systemd)"
        )

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "tcp":
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host
            return f"{host}:{self.port}"
        return "systemd"


@dataclass(frozen=True)
class ServicesConfig:
    """Backend URLs (see docs/daemon.md for the schemes each accepts)."""

    blob_service: str
    directory_service: str
    path_info_service: str
    build_service: str
    evaluator: str


@dataclass(frozen=True)
class LogConfig:
    """Log level (``debug`` … ``critical``) and format (``text``: key=value, or ``json``)."""

    level: str = "info"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class Config:
    """The daemon's validated configuration."""

    state_dir: Path
    listen: tuple[ListenAddress, ...]
    services: ServicesConfig
    journal: Path
    max_jobs: int
    shutdown_grace: float
    socket_mode: int
    socket_group: str | None
    signing_key_file: Path | None
    log: LogConfig


# --- value parsers: (raw value, where, base directory for relative paths) -> value


def _string(value: object, where: str, base: Path) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _path(value: object, where: str, base: Path) -> Path:
    text = _string(value, where, base)
    if "\0" in text:
        raise ConfigError(f"{where}: {text!r} contains NUL")
    return Path(os.path.normpath(base / Path(text).expanduser()))


def _url(value: object, where: str, base: Path) -> str:
    text = _string(value, where, base)
    if "://" not in text:
        raise ConfigError(f"{where}: {text!r} is not a URL (expected scheme://...)")
    return text


def _positive_int(value: object, where: str, base: Path) -> int:
    number = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
    return number


def _seconds(value: object, where: str, base: Path) -> float:
    number: object = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if (
        not isinstance(number, int | float)
        or isinstance(number, bool)
        or not math.isfinite(number)
        or number < 0
    ):
        raise ConfigError(f"{where}: expected a number of seconds >= 0, got {value!r}")
    return float(number)


def _mode(value: object, where: str, base: Path) -> int:
    number = value
    if isinstance(value, str):
        try:
            number = int(value, 8)
        except ValueError:
            number = None
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 0o777:
        raise ConfigError(
            f'{where}: expected an octal file mode between "0000" and "0777", got {value!r}'
        )
    return number


def _choice(choices: Sequence[str]) -> Callable[[object, str, Path], str]:
    def parse(value: object, where: str, base: Path) -> str:
        text = _string(value, where, base).lower()
        if text not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _listen(value: object, where: str, base: Path) -> tuple[ListenAddress, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ConfigError(f"{where}: expected a list of listen addresses, got {value!r}")
    addresses = tuple(ListenAddress.parse(_string(i, where, base).strip(), where) for i in items)
    if len(set(addresses)) != len(addresses):
        raise ConfigError(f"{where}: {value!r} names an address twice")
    return addresses


@dataclass(frozen=True)
class Setting:
    """One setting: its name (flag/env/key), TOML table, parser and help text."""

    name: str
    table: str | None
    parse: Callable[[object, str, Path], object]
    help: str
    repeatable: bool = False

    @property
    def flag(self) -> str:
        """``--blob-service``; logging flags carry their table's name (``--log-level``)."""
        prefix = "log_" if self.table == "log" else ""
        return "--" + (prefix + self.name).replace("_", "-")

    @property
    def env(self) -> str:
        """``TVIXD_BLOB_SERVICE``, ``TVIXD_LOG_LEVEL``."""
        prefix = "LOG_" if self.table == "log" else ""
        return "TVIXD_" + prefix + self.name.upper()

    @property
    def key(self) -> str:
        return f"{self.table}.{self.name}" if self.table else self.name


SETTINGS: tuple[Setting, ...] = (
    Setting("listen", None, _listen, "unix:/path, host:port or systemd (repeatable)", True),
    Setting("state_dir", None, _path, "state directory (default: see docs/daemon.md)"),
    Setting("journal", None, _path, "job journal (SQLite; default STATE/jobs.db)"),
    Setting("max_jobs", None, _positive_int, "builds at a time (default: number of cores)"),
    Setting("shutdown_grace", None, _seconds, "seconds to drain builds on SIGTERM (default 30)"),
    Setting("socket_mode", None, _mode, "mode of unix sockets tvixd creates (default 0660)"),
    Setting("socket_group", None, _string, "group of unix sockets tvixd creates"),
    Setting("signing_key_file", None, _path, "ed25519 key signing new path infos"),
    Setting("blob_service", "services", _url, "blob service URL"),
    Setting("directory_service", "services", _url, "directory service URL"),
    Setting("path_info_service", "services", _url, "path info service URL"),
    Setting("build_service", "services", _url, "build service URL"),
    Setting("evaluator", "services", _url, "evaluator URL"),
    Setting("level", "log", _choice(LOG_LEVELS), "log level (default info)"),
    Setting("format", "log", _choice(LOG_FORMATS), "log format: text (key=value) or json"),
)
_BY_KEY = {s.key: s for s in SETTINGS}


def default_state_dir(environ: Mapping[str, str], is_root: bool) -> Path:
    """``/var/lib/tvixd`` as root, else ``$XDG_STATE_HOME/tvixd`` (``~/.local/state/tvixd``)."""
    if is_root:
        return Path("/var/lib/tvixd")
    state_home = environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state_home) / "tvixd"


def default_socket(environ: Mapping[str, str], is_root: bool, state_dir: Path) -> Path:
    """``/run/tvixd/tvixd.sock`` as root, else ``$XDG_RUNTIME_DIR/tvixd/tvixd.sock`` (or STATE/tvixd.sock)."""
    if is_root:
        return Path("/run/tvixd/tvixd.sock")
    runtime = environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "tvixd" / "tvixd.sock" if runtime else state_dir / "tvixd.sock"


def _read_file(path: Path) -> dict[str, tuple[object, str, Path]]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    values: dict[str, tuple[object, str, Path]] = {}
    base = path.parent
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in ("services", "log"):
                raise ConfigError(f"{path}: unknown table [{key}] (known: [services], [log])")
            for sub, subvalue in value.items():
                _put_file_value(values, path, f"{key}.{sub}", subvalue, base)
        else:
            _put_file_value(values, path, key, value, base)
    return values


def _put_file_value(
    values: dict[str, tuple[object, str, Path]], path: Path, key: str, value: object, base: Path
) -> None:
    if key not in _BY_KEY:
        known = ", ".join(sorted(_BY_KEY))
        raise ConfigError(f"{path}: unknown key {key!r} (known keys: {known})")
    values[key] = (value, f"{path}: key {key!r}", base)


def load_config(
    *,
    config_file: Path | None,
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    is_root: bool,
    cwd: Path,
) -> Config:
    """Merge defaults, ``config_file``, ``environ`` and ``flags`` (keys as in :data:`SETTINGS`).

    ``flags`` holds only the flags given on the command line (``listen`` as a
    list).  Raises :class:`ConfigError`.
    """
    layers: list[tuple[str, object, str, Path]] = []  # (key, value, where, base), lowest first
    if config_file is not None:
        layers += [(key, *entry) for key, entry in _read_file(config_file).items()]
    for setting in SETTINGS:
        if environ.get(setting.env):
            where = f"environment variable {setting.env}"
            layers.append((setting.key, environ[setting.env], where, cwd))
    for key, value in flags.items():
        layers.append((key, value, f"flag {_BY_KEY[key].flag}", cwd))
    # every value is checked, including those a higher layer overrides
    values = {key: _BY_KEY[key].parse(value, where, base) for key, value, where, base in layers}

    def get(key: str, default: T) -> T:
        return cast(T, values.get(key, default))

    state_dir = get("state_dir", default_state_dir(environ, is_root))
    default_listen = (ListenAddress("unix", path=default_socket(environ, is_root, state_dir)),)
    return Config(
        state_dir=state_dir,
        listen=get("listen", default_listen),
        services=ServicesConfig(
            blob_service=get("services.blob_service", f"objectstore+file://{state_dir}/blobs"),
            directory_service=get(
                "services.directory_service", f"sqlite://{state_dir}/directories.db"
            ),
            path_info_service=get(
                "services.path_info_service", f"sqlite://{state_dir}/pathinfo.db"
            ),
            build_service=get("services.build_service", f"oci://{state_dir}/builds"),
            evaluator=get("services.evaluator", "nix://"),
        ),
        journal=get("journal", state_dir / "jobs.db"),
        max_jobs=get("max_jobs", os.cpu_count() or 1),
        shutdown_grace=get("shutdown_grace", 30.0),
        socket_mode=get("socket_mode", 0o660),
        socket_group=get("socket_group", None),
        signing_key_file=get("signing_key_file", None),
        log=LogConfig(level=get("log.level", "info"), format=get("log.format", "text")),
    )
