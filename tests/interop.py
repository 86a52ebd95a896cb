"""An independent protobuf/gRPC implementation of our wire contracts.

``compile_grpcio(out)`` compiles the very same ``.proto`` files in
``proto/defs`` with grpcio-tools (Google's protoc and protobuf runtime, plus
grpcio stubs) and returns the generated modules.  Tests use them to check that
what our betterproto bindings put on the wire is what another implementation
reads, and to talk to our gRPC servers with a client that shares no code with
ours (and vice versa).

The modules live in the ``tvix.*`` namespace, as protoc names them; ours are
``proto.gen.tvix.*``, so the two never collide.  ``tvixd/v1`` is loaded under
a private name because ``tvixd`` is our own package.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import anyio
import anyio.to_thread

_T = TypeVar("_T")

DEFS = Path(__file__).resolve().parent.parent / "proto" / "defs"

_MODULES = {
    "castore": "tvix.castore.v1.castore_pb2",
    "blobstore": "tvix.castore.v1.rpc_blobstore_pb2",
    "blobstore_grpc": "tvix.castore.v1.rpc_blobstore_pb2_grpc",
    "directory": "tvix.castore.v1.rpc_directory_pb2",
    "directory_grpc": "tvix.castore.v1.rpc_directory_pb2_grpc",
    "pathinfo": "tvix.store.v1.pathinfo_pb2",
    "rpc_pathinfo": "tvix.store.v1.rpc_pathinfo_pb2",
    "rpc_pathinfo_grpc": "tvix.store.v1.rpc_pathinfo_pb2_grpc",
    "build": "tvix.build.v1.build_pb2",
    "rpc_build": "tvix.build.v1.rpc_build_pb2",
    "rpc_build_grpc": "tvix.build.v1.rpc_build_pb2_grpc",
}


@dataclass(frozen=True)
class GrpcioProtos:
    """The grpcio-tools modules, by short name (``castore``, ``pathinfo``, ...)."""

    castore: Any
    blobstore: Any
    blobstore_grpc: Any
    directory: Any
    directory_grpc: Any
    pathinfo: Any
    rpc_pathinfo: Any
    rpc_pathinfo_grpc: Any
    build: Any
    rpc_build: Any
    rpc_build_grpc: Any
    coordinator: Any
    coordinator_grpc: Any


def _load_file(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def compile_grpcio(out: Path) -> GrpcioProtos:
    """Compile ``proto/defs`` with grpcio-tools into ``out`` and import the result."""
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(str(p.relative_to(DEFS)) for p in DEFS.rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{DEFS}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *files,
        ],
        check=True,
        cwd=DEFS,
    )
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    modules = {short: importlib.import_module(name) for short, name in _MODULES.items()}
    modules["coordinator"] = _load_file(
        "interop_tvixd_v1_coordinator_pb2", out / "tvixd" / "v1" / "coordinator_pb2.py"
    )
    # The _grpc module imports its _pb2 sibling as tvixd.v1, which is ours: point it at the copy.
    grpc_file = out / "tvixd" / "v1" / "coordinator_pb2_grpc.py"
    grpc_file.write_text(
        grpc_file.read_text().replace(
            "from tvixd.v1 import coordinator_pb2 as",
            "import interop_tvixd_v1_coordinator_pb2 as",
        )
    )
    modules["coordinator_grpc"] = _load_file("interop_tvixd_v1_coordinator_pb2_grpc", grpc_file)
    return GrpcioProtos(**modules)


async def in_thread(fn: Callable[[], _T]) -> _T:
    """Run blocking grpcio client code off the loop, so our server on it keeps serving."""
    with anyio.fail_after(60):
        return await anyio.to_thread.run_sync(fn)


def rpc_error(call: Callable[[], object]) -> tuple[Any, str]:
    """The status code and details of the ``grpc.RpcError`` that ``call`` must raise."""
    import grpc
    import pytest

    with pytest.raises(grpc.RpcError) as excinfo:
        call()
    error: Any = excinfo.value
    return error.code(), error.details()
