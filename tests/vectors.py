"""Access to the shared test vectors (``../shared/vectors`` beside the checkout).

Set ``TVIXD_VECTORS`` to point elsewhere.  A missing vectors directory is a
hard error, not a skip: the vectors are part of the test contract.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

_DEFAULT = Path(__file__).resolve().parent.parent.parent / "shared" / "vectors"


def vectors_dir() -> Path:
    path = Path(os.environ.get("TVIXD_VECTORS", _DEFAULT))
    if not path.is_dir():
        raise FileNotFoundError(f"test vectors not found at {path} (set TVIXD_VECTORS)")
    return path


@cache
def load(name: str) -> dict[str, Any]:
    """The parsed JSON of ``vectors/<name>.json``."""
    with (vectors_dir() / f"{name}.json").open() as f:
        data: dict[str, Any] = json.load(f)
    return data


def entries(name: str, **match: Any) -> list[dict[str, Any]]:
    """Entries of a vectors file whose fields equal every ``match`` item."""
    return [e for e in load(name)["entries"] if all(e.get(k) == v for k, v in match.items())]


def entry_id(entry: dict[str, Any]) -> str:
    """A readable pytest id for a vector entry."""
    for key in ("id", "file", "name", "nixbase32", "input", "basename"):
        if isinstance(entry.get(key), str) and entry[key]:
            return str(entry[key])[:60]
    return "entry"
