"""The configuration table: what is accepted (and what it means), what is rejected (and why)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvixd.config import SETTINGS, Config, ConfigError, ListenAddress, load_config
from tvixd.main import render_config

ROOT = Path(__file__).resolve().parents[2]


def load(
    tmp_path: Path,
    toml: str | None = None,
    *,
    flags: dict[str, object] | None = None,
    environ: dict[str, str] | None = None,
    is_root: bool = True,
) -> Config:
    config_file = None
    if toml is not None:
        config_file = tmp_path / "etc" / "tvixd.toml"
        config_file.parent.mkdir(exist_ok=True)
        config_file.write_text(toml)
    return load_config(
        config_file=config_file,
        flags=flags or {},
        environ=environ or {},
        is_root=is_root,
        cwd=tmp_path / "cwd",
    )


def test_embedded_defaults_as_root(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.state_dir == Path("/var/lib/tvixd")
    assert config.listen == (ListenAddress("unix", path=Path("/run/tvixd/tvixd.sock")),)
    assert vars(config.services) == {
        "blob_service": "objectstore+file:///var/lib/tvixd/blobs",
        "directory_service": "sqlite:///var/lib/tvixd/directories.db",
        "path_info_service": "sqlite:///var/lib/tvixd/pathinfo.db",
        "build_service": "oci:///var/lib/tvixd/builds",
        "evaluator": "nix://",
    }
    assert config.journal == Path("/var/lib/tvixd/jobs.db")
    assert config.socket_mode == 0o660
    assert config.max_jobs >= 1
    assert config.shutdown_grace == 30.0
    assert config.signing_key_file is None
    assert (config.log.level, config.log.format) == ("info", "text")


def test_defaults_for_a_user(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": "/home/u/.state", "XDG_RUNTIME_DIR": "/run/user/1000"}
    config = load(tmp_path, environ=env, is_root=False)
    assert config.state_dir == Path("/home/u/.state/tvixd")
    assert config.listen[0].path == Path("/run/user/1000/tvixd/tvixd.sock")
    assert config.services.blob_service == "objectstore+file:///home/u/.state/tvixd/blobs"
    no_runtime = load(tmp_path, environ={"XDG_STATE_HOME": "/s"}, is_root=False)
    assert no_runtime.listen[0].path == Path("/s/tvixd/tvixd.sock")


FULL = """
state_dir = "state"
listen = ["systemd", "unix:/run/t.sock", "127.0.0.1:9000", "[::1]:9001"]
journal = "/j/jobs.db"
max_jobs = 3
shutdown_grace = 12.5
socket_mode = "0600"
socket_group = "tvixd"
signing_key_file = "keys/secret"

[services]
blob_service = "memory://"
directory_service = "memory://"
path_info_service = "nix+file:///cache"
build_service = "dummy://"
evaluator = "nix://?max_concurrency=2"

[log]
level = "DEBUG"
format = "json"
"""


def test_full_file(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)
    etc = tmp_path / "etc"
    assert config.state_dir == etc / "state"  # relative to the config file
    assert [str(a) for a in config.listen] == [
        "systemd", "unix:/run/t.sock", "127.0.0.1:9000", "[::1]:9001",
    ]  # fmt: skip
    assert config.listen[3] == ListenAddress("tcp", host="::1", port=9001)
    assert config.journal == Path("/j/jobs.db")
    assert (config.max_jobs, config.shutdown_grace) == (3, 12.5)
    assert (config.socket_mode, config.socket_group) == (0o600, "tvixd")
    assert config.signing_key_file == etc / "keys" / "secret"
    assert config.services.path_info_service == "nix+file:///cache"
    assert config.services.evaluator == "nix://?max_concurrency=2"
    assert (config.log.level, config.log.format) == ("debug", "json")
    # a file only moves the defaults derived from state_dir it does not set itself
    assert load(tmp_path, 'state_dir = "/s"').services.build_service == "oci:///s/builds"


def test_precedence_flags_over_environment_over_file(tmp_path: Path) -> None:
    toml = "max_jobs = 1\nshutdown_grace = 1\n[log]\nlevel = 'error'\n"
    env = {"TVIXD_MAX_JOBS": "2", "TVIXD_LOG_LEVEL": "warning", "TVIXD_STATE_DIR": "rel"}
    config = load(tmp_path, toml, environ=env, flags={"max_jobs": "3"})
    assert config.max_jobs == 3
    assert config.log.level == "warning"
    assert config.shutdown_grace == 1.0
    assert config.state_dir == tmp_path / "cwd" / "rel"  # environment: relative to cwd
    listen = load(tmp_path, environ={"TVIXD_LISTEN": "unix:/a.sock,127.0.0.1:1"}).listen
    assert [str(a) for a in listen] == ["unix:/a.sock", "127.0.0.1:1"]


ACCEPTED: list[tuple[str, Any, str, object]] = [
    # (key, value, attribute, expected)
    ("max_jobs", 8, "max_jobs", 8),
    ("max_jobs", "8", "max_jobs", 8),
    ("shutdown_grace", 0, "shutdown_grace", 0.0),
    ("shutdown_grace", "2.5", "shutdown_grace", 2.5),
    ("socket_mode", "0660", "socket_mode", 0o660),
    ("socket_mode", 0o640, "socket_mode", 0o640),
    ("listen", ["unix:/x.sock"], "listen", (ListenAddress("unix", path=Path("/x.sock")),)),
    ("listen", ["localhost:0"], "listen", (ListenAddress("tcp", host="localhost", port=0),)),
    ("listen", ["systemd"], "listen", (ListenAddress("systemd"),)),
    ("log.level", "Warning", "log.level", "warning"),
    ("services.evaluator", "nix://", "services.evaluator", "nix://"),
]

REJECTED: list[tuple[str, Any, str]] = [
    ("max_jobs", 0, "expected a positive integer, got 0"),
    ("max_jobs", True, "expected a positive integer, got True"),
    ("max_jobs", 1.5, "expected a positive integer, got 1.5"),
    ("max_jobs", "many", "expected a positive integer, got 'many'"),
    ("shutdown_grace", -1, "expected a number of seconds >= 0, got -1"),
    ("shutdown_grace", "nan", "got 'nan'"),
    ("shutdown_grace", "inf", "got 'inf'"),
    ("socket_mode", "0999", "expected an octal file mode"),
    ("socket_mode", 0o1777, "expected an octal file mode"),
    ("socket_mode", "rw", "got 'rw'"),
    ("listen", [], "expected a list of listen addresses, got []"),
    ("listen", "unix:relative.sock", "needs an absolute socket path"),
    ("listen", "unix:/dir/", "needs an absolute socket path"),
    ("listen", "localhost", "is not a listen address"),
    ("listen", "localhost:65536", "is not a listen address"),
    ("listen", "::1:80", "write IPv6 addresses as [addr]:port"),
    ("listen", "[zz]:80", "invalid IPv6 address"),
    ("listen", ["unix:/a", "unix:/a"], "names an address twice"),
    ("listen", [3], "expected a non-empty string, got 3"),
    ("state_dir", "", "expected a non-empty string"),
    ("state_dir", 5, "expected a non-empty string, got 5"),
    ("services.blob_service", "memory", "'memory' is not a URL"),
    ("services.evaluator", ["nix://"], "expected a non-empty string"),
    ("log.level", "loud", "'loud' is not one of debug, info, warning, error, critical"),
    ("log.format", "xml", "'xml' is not one of text, json"),
]


def _toml(key: str, value: object) -> str:
    table, _, name = key.rpartition(".")
    rendered = repr(value).replace("'", '"').replace("True", "true")
    if isinstance(value, int) and not isinstance(value, bool):
        rendered = str(value)
    return (f"[{table}]\n" if table else "") + f"{name} = {rendered}\n"


@pytest.mark.parametrize(("key", "value", "attribute", "expected"), ACCEPTED)
def test_accepted(
    tmp_path: Path, key: str, value: object, attribute: str, expected: object
) -> None:
    for config in (load(tmp_path, _toml(key, value)), load(tmp_path, flags={key: value})):
        got: object = config
        for part in attribute.split("."):
            got = getattr(got, part)
        assert got == expected


@pytest.mark.parametrize(("key", "value", "message"), REJECTED)
def test_rejected(tmp_path: Path, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}': .*{re.escape(message)}"):
        load(tmp_path, _toml(key, value))
    with pytest.raises(ConfigError, match=f"^flag --[a-z-]+: .*{re.escape(message)}"):
        load(tmp_path, flags={key: value})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("colour = 'blue'\n", "unknown key 'colour' (known keys: journal, listen"),
        ("[services]\nblobs = 'memory://'\n", "unknown key 'services.blobs'"),
        ("[server]\nport = 1\n", "unknown table [server] (known: [services], [log])"),
        ("[log]\nlevel = 'info'\ncolour = true\n", "unknown key 'log.colour'"),
        ("max_jobs = \n", "is not valid TOML"),
    ],
)
def test_rejected_files(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path, toml)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the config file .*/nope.toml"):
        load_config(
            config_file=tmp_path / "nope.toml", flags={}, environ={}, is_root=True, cwd=tmp_path
        )


def test_environment_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^environment variable TVIXD_SOCKET_MODE: "):
        load(tmp_path, environ={"TVIXD_SOCKET_MODE": "777x"})
    # unknown TVIXD_* variables belong to other tools (tvixctl): ignored
    assert load(tmp_path, environ={"TVIXD_SOCKET": "/x"}).max_jobs >= 1


def test_every_setting_has_flag_env_and_key() -> None:
    flags = {s.flag for s in SETTINGS}
    assert {"--listen", "--state-dir", "--blob-service", "--directory-service"} <= flags
    assert {"--path-info-service", "--build-service", "--evaluator", "--max-jobs"} <= flags
    assert {"--signing-key-file", "--shutdown-grace", "--log-level", "--log-format"} <= flags
    assert len({s.env for s in SETTINGS}) == len({s.key for s in SETTINGS}) == len(SETTINGS)


def test_check_config_round_trips(tmp_path: Path) -> None:
    first = load(tmp_path, FULL)
    rendered = tmp_path / "rendered.toml"
    rendered.write_text(render_config(first))
    again = load_config(config_file=rendered, flags={}, environ={}, is_root=True, cwd=tmp_path)
    assert again == first
    result = subprocess.run(
        [sys.executable, "-m", "tvixd.main", "--config", str(rendered), "--check-config"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == render_config(first)


@given(
    st.one_of(
        st.builds(
            lambda parts: ListenAddress("unix", path=Path("/" + "/".join(parts))),
            st.lists(
                st.text("abc.-_ü", min_size=1).filter(lambda p: p not in (".", "..")),
                min_size=1,
                max_size=4,
            ),
        ),
        st.builds(
            lambda host, port: ListenAddress("tcp", host=host, port=port),
            st.sampled_from(["localhost", "127.0.0.1", "::1", "fe80::1", "example.org"]),
            st.integers(0, 65535),
        ),
        st.just(ListenAddress("systemd")),
    )
)
@settings(max_examples=200)
def test_listen_addresses_round_trip(address: ListenAddress) -> None:
    assert ListenAddress.parse(str(address)) == address
