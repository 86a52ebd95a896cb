"""Build services by URL.

===========================================  ===========================================
URL                                          backend
===========================================  ===========================================
``oci:///var/lib/tvixd/builds[?…]``          runc builds under that state directory
``dummy://[?fail=all][&delay=S]``            runs nothing (tests of the coordinator)
``grpc+unix:///p.sock[?api=dobuild]``        a remote builder over a unix socket
``grpc+http://host:port[?api=dobuild]``      a remote builder over plaintext TCP
===========================================  ===========================================

``oci://`` parameters: ``max_builds`` (default: the number of cores),
``timeout`` (seconds per build; default none), ``uid`` / ``gid`` of the
build user (1000 / 100), ``sandbox_shell`` (a static shell bound at
``/bin/sh``, default ``/bin/busybox``; empty: none), ``runc`` (the binary),
``ro_paths`` (comma-separated host paths builds may request as
``available_ro_paths``), ``systems`` (comma-separated; default: this
machine's), ``nofile``, ``pids_limit`` and ``link_limit`` (inputs with more
entries than that are bind-mounted instead of hard-linked; ``0``: every
input is mounted; default: every input is linked).  ``api=dobuild`` makes the gRPC
adapter use upstream's ``DoBuild`` (no log stream) instead of our streaming
method.  Unknown parameters, a bad value or an unknown scheme raise
``InvalidRequest`` quoting the URL (the scheme is dispatched by
``tvixd.castore.registry.pick_backend``, like every registry's).  The caller owns the service and must
``await service.close()``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from clients.build.grpc import GrpcBuildService
from clients.build.protocols import BuildService
from clients.castore.protocols import BlobService, DirectoryService
from clients.errors import InvalidRequest
from tvixd.build.dummy import DummyBuildService
from tvixd.build.oci.bundle import SandboxConfig
from tvixd.build.oci.service import OciBuildService, OciConfig
from tvixd.castore.registry import pick_backend

__all__ = ["build_service_from_url"]

T = TypeVar("T")


class _Query:
    """The query of ``url``: single-valued parameters, each taken at most once, none unknown."""

    def __init__(self, url: str, query: str) -> None:
        self.url = url
        try:
            parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError as exc:
            raise InvalidRequest(f"invalid URL {url!r}: bad query: {exc}") from exc
        self.values: dict[str, str] = {}
        for key, values in parsed.items():
            if len(values) != 1:
                raise InvalidRequest(f"invalid URL {url!r}: parameter {key!r} given twice")
            self.values[key] = values[0]

    def take(self, key: str, convert: Callable[[str], T], check: str = "") -> T | None:
        if key not in self.values:
            return None
        raw = self.values.pop(key)
        try:
            value = convert(raw)
        except ValueError:
            value = None
        if value is None or (check == "positive" and not value > 0):  # type: ignore[operator]
            raise InvalidRequest(f"invalid URL {self.url!r}: bad value {raw!r} for {key!r}")
        return value

    def done(self) -> None:
        if self.values:
            raise InvalidRequest(
                f"invalid URL {self.url!r}: unknown parameters {sorted(self.values)}"
            )


def _paths(text: str) -> tuple[str, ...]:
    paths = tuple(p for p in text.split(",") if p)
    if any(not p.startswith("/") for p in paths):
        raise ValueError(text)
    return paths


def _non_negative(text: str) -> int | None:
    value = int(text)
    return value if value >= 0 else None


async def _oci(url: str, blobs: BlobService, directories: DirectoryService) -> BuildService:
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/") or parts.path.rstrip("/") == "":
        raise InvalidRequest(
            f"invalid URL {url!r}: write oci:///absolute/state/dir (three slashes, not the root)"
        )
    if parts.fragment:
        raise InvalidRequest(f"invalid URL {url!r}: oci:// takes no fragment")
    q = _Query(url, parts.query)
    sandbox: dict[str, Any] = {}
    for key in ("uid", "gid", "nofile", "pids_limit"):
        value = q.take(key, int, "positive" if key != "uid" and key != "gid" else "")
        if value is not None:
            if value < 0:
                raise InvalidRequest(f"invalid URL {url!r}: {key} must not be negative")
            sandbox[key] = value
    shell = q.take("sandbox_shell", str)
    if shell is not None:
        if shell and not shell.startswith("/"):
            raise InvalidRequest(f"invalid URL {url!r}: sandbox_shell must be an absolute path")
        sandbox["sandbox_shell"] = shell or None
    config = OciConfig(
        max_builds=q.take("max_builds", int, "positive"),
        timeout=q.take("timeout", float, "positive"),
        allowed_ro_paths=q.take("ro_paths", _paths) or (),
        systems=q.take("systems", lambda s: tuple(x for x in s.split(",") if x) or None),
        sandbox=SandboxConfig(**sandbox),
        runc=q.take("runc", str) or "runc",
        link_limit=q.take("link_limit", _non_negative),
    )
    q.done()
    return await OciBuildService.open(Path(unquote(parts.path)), blobs, directories, config)


async def _dummy(url: str, blobs: BlobService, directories: DirectoryService) -> BuildService:
    parts = urlsplit(url)
    if parts.netloc or parts.path or parts.fragment:
        raise InvalidRequest(f"invalid URL {url!r}: dummy:// takes no host, path or fragment")
    q = _Query(url, parts.query)
    fail = q.take("fail", lambda s: s if s in ("all", "request") else None)
    delay = q.take("delay", float)
    if delay is not None and delay < 0:
        raise InvalidRequest(f"invalid URL {url!r}: delay must not be negative")
    q.done()
    return DummyBuildService(blobs, fail_all=fail == "all", delay=delay or 0.0)


async def _grpc(url: str, blobs: BlobService, directories: DirectoryService) -> BuildService:
    parts = urlsplit(url)
    q = _Query(url, parts.query)
    api = q.take("api", lambda s: s if s in ("streaming", "dobuild") else None)
    q.done()
    bare = urlunsplit(parts._replace(query=""))
    return GrpcBuildService.from_url(bare, streaming=api != "dobuild")


_BACKENDS = {"oci": _oci, "dummy": _dummy, "grpc+unix": _grpc, "grpc+http": _grpc}


async def build_service_from_url(
    url: str, *, blobs: BlobService, directories: DirectoryService
) -> BuildService:
    """Open the build service ``url`` names (see the module docstring).

    ``blobs`` and ``directories`` are where local builders read inputs from
    and put outputs into (a remote builder uses its own store).
    """
    factory = pick_backend("build", url, _BACKENDS, bare="unsupported")
    return await factory(url, blobs, directories)
