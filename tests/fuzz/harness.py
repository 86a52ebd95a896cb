"""Shared main() for the atheris fuzz targets in this directory."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run(test_one_input: Callable[[bytes], None]) -> None:
    """Fuzz ``test_one_input`` with atheris, taking libFuzzer flags from argv."""
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
