"""Shape checks for local backend URLs; each backend calls the one that fits it.

Every rejection is an ``InvalidRequest`` that quotes the URL and says what
is wrong with it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from clients.errors import InvalidRequest


def _split(url: str, scheme: str) -> SplitResult:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidRequest(f"invalid URL {url!r}: {exc}") from exc
    if parts.scheme != scheme:
        raise InvalidRequest(f"invalid URL {url!r}: expected the scheme {scheme}://")
    if parts.query or parts.fragment:
        raise InvalidRequest(f"invalid URL {url!r}: {scheme}:// takes no query or fragment")
    return parts


def require_bare(url: str, scheme: str) -> None:
    """Accept exactly ``<scheme>://`` (no host, path, query or fragment)."""
    parts = _split(url, scheme)
    if parts.netloc or parts.path:
        raise InvalidRequest(f"invalid URL {url!r}: {scheme}:// takes no host or path")


def local_path(url: str, scheme: str, *, directory: bool) -> Path:
    """The absolute path of ``<scheme>:///abs/path`` (percent-decoded).

    ``directory`` allows a trailing slash; a file path must not have one.
    """
    parts = _split(url, scheme)
    if parts.netloc:
        raise InvalidRequest(
            f"invalid URL {url!r}: {scheme}:// takes no host; "
            f"write {scheme}:///absolute/path (three slashes)"
        )
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise InvalidRequest(f"invalid URL {url!r}: {scheme}:// needs an absolute path")
    if "\0" in path:
        raise InvalidRequest(f"invalid URL {url!r}: the path contains NUL")
    if path.rstrip("/") == "":
        raise InvalidRequest(f"invalid URL {url!r}: the path must not be the root directory")
    if not directory and path.endswith("/"):
        raise InvalidRequest(f"invalid URL {url!r}: {scheme}:// needs a file path, not a directory")
    return Path(path)
