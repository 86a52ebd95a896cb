"""Regenerate the betterproto bindings in proto/gen from proto/defs.

    python scripts/gen_proto.py            # rewrite proto/gen
    python scripts/gen_proto.py --out DIR  # write somewhere else (staleness test)

The compiler is pinned through pyproject.toml (betterproto[compiler]==2.0.0b7,
protoc from grpcio-tools); the output is deterministic for a given version.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFS = ROOT / "proto" / "defs"
GEN = ROOT / "proto" / "gen"


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(DEFS)) for p in DEFS.rglob("*.proto"))


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # protoc finds the plugin (protoc-gen-python_betterproto) on PATH, next to our python.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{DEFS}",
            f"--python_betterproto_out={out}",
            *proto_files(),
        ],
        check=True,
        cwd=DEFS,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    (out / "py.typed").write_text("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GEN)
    args = parser.parse_args()
    if args.out == GEN and GEN.exists():
        shutil.rmtree(GEN)
    generate(args.out)


if __name__ == "__main__":
    main()
