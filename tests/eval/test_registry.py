"""Evaluators by URL, and the one scheme dispatch every registry shares.

The accepted ``nix://`` shapes and its option checks are in test_units.py;
here: what is not a URL, unknown schemes, bad query strings, and that the
evaluator, build, castore and path-info registries word those errors alike
(``tvixd.castore.registry.pick_backend``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from clients.errors import InvalidRequest
from tests.eval.conftest import Stores
from tvixd.build.registry import build_service_from_url
from tvixd.castore.registry import blob_service_from_url, directory_service_from_url
from tvixd.eval import evaluator_from_url
from tvixd.store.registry import path_info_service_from_url

pytestmark = pytest.mark.asyncio

KNOWN = "max_concurrency, timeout, nix_instantiate, nix_store"


async def open_evaluator(stores: Stores, url: object) -> Any:
    return await evaluator_from_url(
        url,  # type: ignore[arg-type]
        blobs=stores.blobs,
        directories=stores.directories,
        pathinfos=stores.pathinfos,
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        # unknown schemes, and what is no URL at all
        ("ftp://x", "evaluator URL 'ftp://x': unsupported scheme 'ftp' (supported: nix://)"),
        ("NIX://", "evaluator URL 'NIX://': unsupported scheme 'NIX' (supported: nix://)"),
        ("tvix://", "unsupported scheme 'tvix'"),
        ("nix:", "evaluator URL 'nix:' is not a URL (expected scheme://...)"),
        ("nix:/", "evaluator URL 'nix:/' is not a URL"),
        # bad query strings
        ("nix://?timeout", "evaluator URL 'nix://?timeout': malformed query: bad query field"),
        ("nix://?timeout=1&&", "malformed query: bad query field: ''"),
        ("nix://?=1", f"evaluator URL 'nix://?=1': unknown option '' (known: {KNOWN})"),
        ("nix://?colour=blue&timeout=1", f"unknown option 'colour' (known: {KNOWN})"),
        ("nix://?nix_store=", "option 'nix_store' needs exactly one value"),
        ("nix://?max_concurrency=1&max_concurrency=1", "'max_concurrency' needs exactly one value"),
        ("nix://?timeout=nan", "timeout must be a positive number, got 'nan'"),
        ("nix://#fragment", "nix:// takes no host or path, only ?options"),
    ],
)
async def test_rejected(stores: Stores, url: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        await open_evaluator(stores, url)


@pytest.mark.parametrize("url", [None, 3, b"nix://"])
async def test_a_url_is_a_string(stores: Stores, url: object) -> None:
    expected = f"an evaluator URL is a string, got {type(url).__name__}$"
    with pytest.raises(InvalidRequest, match=expected):
        await open_evaluator(stores, url)


def _registries(stores: Stores) -> dict[str, Callable[[Any], Awaitable[Any]]]:
    """Each registry's opener, by how its errors name the service."""
    return {
        "blob service": blob_service_from_url,
        "directory service": directory_service_from_url,
        "path info service": lambda url: path_info_service_from_url(
            url, blobs=stores.blobs, directories=stores.directories
        ),
        "build service": lambda url: build_service_from_url(
            url, blobs=stores.blobs, directories=stores.directories
        ),
        "evaluator": lambda url: open_evaluator(stores, url),
    }


async def test_every_registry_words_scheme_errors_alike(stores: Stores) -> None:
    for name, open_url in _registries(stores).items():
        with pytest.raises(InvalidRequest) as unknown:
            await open_url("ftp://host/x")
        message = str(unknown.value)
        assert message.startswith(f"{name} URL 'ftp://host/x': unsupported scheme 'ftp' ("), name
        supported = re.fullmatch(r".*\(supported: (.*)\)", message)
        assert supported is not None, message
        schemes = supported.group(1).split(", ")
        assert schemes, message
        assert all(re.fullmatch(r"[a-z+]+://", scheme) for scheme in schemes), message
        with pytest.raises(InvalidRequest) as not_a_string:
            await open_url(7)
        article = "an" if name[0] in "aeiou" else "a"
        assert str(not_a_string.value) == f"{article} {name} URL is a string, got int"
