"""The evaluator: Nix code into derivations, and input sources into our store.

``evaluator_from_url`` opens the backend a URL names:

=======================================  ==========================================
URL                                      backend
=======================================  ==========================================
``nix://``                               the real Nix evaluator (``nix-instantiate``)
``nix://?max_concurrency=4&timeout=600`` the same, with options
=======================================  ==========================================

Options of ``nix://`` (query parameters, each at most once): ``max_concurrency``
(``nix-instantiate`` processes at a time; default: the number of cores),
``timeout`` (seconds per ``nix-instantiate`` run; default 3600),
``nix_instantiate`` and ``nix_store`` (the binaries; default: found on ``$PATH``).
"""

from __future__ import annotations

from tvixd.eval.nix import NixEvaluator
from tvixd.eval.protocol import (
    DerivationFileError,
    EvalRequest,
    EvaluatedRoot,
    EvaluationError,
    Evaluator,
    NixArg,
    SourceError,
)
from tvixd.eval.registry import evaluator_from_url
from tvixd.eval.roots import parse_drv_path, roots_from_drv_paths

__all__ = [
    "DerivationFileError",
    "EvalRequest",
    "EvaluatedRoot",
    "EvaluationError",
    "Evaluator",
    "NixArg",
    "NixEvaluator",
    "SourceError",
    "evaluator_from_url",
    "parse_drv_path",
    "roots_from_drv_paths",
]
