"""The root of nixcompat's error hierarchy.

Every parser in nixcompat raises a subclass of :class:`NixCompatError` (a
``ValueError``) for bad input, with a message naming what is wrong and the
value (and, for streams, the byte offset).  Anything else escaping a parser
is a bug; the fuzz targets in ``tests/fuzz/`` check exactly that.
"""

from __future__ import annotations


class NixCompatError(ValueError):
    """Input that is not a valid Nix format."""
