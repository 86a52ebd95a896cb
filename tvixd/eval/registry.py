"""Evaluators by URL (see the table in :mod:`tvixd.eval`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from clients.castore.protocols import BlobService, DirectoryService
from clients.errors import InvalidRequest
from clients.store.protocols import PathInfoService
from tvixd.castore.registry import pick_backend
from tvixd.eval.nix import NixEvaluator
from tvixd.eval.protocol import Evaluator

__all__ = ["evaluator_from_url"]

_OPTIONS = ("max_concurrency", "timeout", "nix_instantiate", "nix_store")


def _nix_options(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    if parts.netloc or parts.path or parts.fragment:
        raise InvalidRequest(
            f"evaluator URL {url!r}: nix:// takes no host or path, only ?options "
            f"({', '.join(_OPTIONS)})"
        )
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise InvalidRequest(f"evaluator URL {url!r}: malformed query: {exc}") from exc
    options: dict[str, str] = {}
    for key, values in query.items():
        if key not in _OPTIONS:
            raise InvalidRequest(
                f"evaluator URL {url!r}: unknown option {key!r} (known: {', '.join(_OPTIONS)})"
            )
        if len(values) != 1 or not values[0]:
            raise InvalidRequest(f"evaluator URL {url!r}: option {key!r} needs exactly one value")
        options[key] = values[0]
    return options


def _number(url: str, key: str, value: str, kind: type[int] | type[float]) -> float:
    try:
        number = kind(value)
    except ValueError:
        number = math.nan
    if not number > 0 or math.isinf(number):
        raise InvalidRequest(
            f"evaluator URL {url!r}: {key} must be a positive number, got {value!r}"
        )
    return number


async def _nix(
    url: str, blobs: BlobService, directories: DirectoryService, pathinfos: PathInfoService
) -> Evaluator:
    options = _nix_options(url)
    concurrency = options.get("max_concurrency")
    timeout = options.get("timeout")
    return NixEvaluator(
        blobs,
        directories,
        pathinfos,
        nix_instantiate=options.get("nix_instantiate", "nix-instantiate"),
        nix_store=options.get("nix_store", "nix-store"),
        max_concurrency=int(_number(url, "max_concurrency", concurrency, int))
        if concurrency is not None
        else None,
        timeout=_number(url, "timeout", timeout, float) if timeout is not None else 3600.0,
    )


_Factory = Callable[
    [str, BlobService, DirectoryService, PathInfoService], Coroutine[Any, Any, Evaluator]
]
_BACKENDS: Mapping[str, _Factory] = {"nix": _nix}


async def evaluator_from_url(
    url: str,
    *,
    blobs: BlobService,
    directories: DirectoryService,
    pathinfos: PathInfoService,
) -> Evaluator:
    """Open the evaluator ``url`` names; the caller owns it and must ``await evaluator.close()``.

    The services are where input sources are imported.  Raises
    :class:`~clients.errors.InvalidRequest` quoting the URL when it is not
    supported (the scheme is dispatched by
    :func:`tvixd.castore.registry.pick_backend`, like every registry's).
    """
    factory = pick_backend("evaluator", url, _BACKENDS, noun="evaluator")
    return await factory(url, blobs, directories, pathinfos)
