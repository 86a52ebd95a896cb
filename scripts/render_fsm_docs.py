"""Render the lifecycle machines' docs from the code: ``python scripts/render_fsm_docs.py``.

Writes docs/fsm-derivation.mmd and docs/fsm-job.mmd (mermaid stateDiagram-v2,
from :func:`fsm.diagram.mermaid`) and refreshes every generated block in
docs/fsm.md and README.md: a block is the text between the lines
``<!-- BEGIN <name> -->`` and ``<!-- END <name> -->`` for a ``<name>`` starting
with ``fsm-`` (other markers belong to someone else): one of the .mmd file
names (the block becomes a ```mermaid fence with the same text) or
``fsm-derivation-events`` / ``fsm-job-events`` (the event tables).
A file without markers is left alone.  With ``--check`` nothing is written;
the exit status is 1 when any file differs from what would be written.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsm.derivation import DerivationMachine  # noqa: E402
from fsm.diagram import events_table, mermaid  # noqa: E402
from fsm.job import JobMachine  # noqa: E402

MARKED_FILES = ("docs/fsm.md", "README.md")
_BLOCK = re.compile(
    r"(<!-- BEGIN (?P<name>fsm-[\w.-]+) -->\n)(?P<body>.*?)(<!-- END (?P=name) -->)", re.S
)


def generated() -> dict[str, str]:
    """Block name -> generated text; the ``.mmd`` names are also files under docs/."""
    return {
        "fsm-derivation.mmd": mermaid(DerivationMachine),
        "fsm-job.mmd": mermaid(JobMachine),
        "fsm-derivation-events": events_table(DerivationMachine),
        "fsm-job-events": events_table(JobMachine),
    }


def refresh(text: str, blocks: dict[str, str]) -> str:
    """``text`` with every marked block replaced by its generated content."""

    def body(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in blocks:
            raise SystemExit(f"unknown generated block {name!r} (known: {', '.join(blocks)})")
        content = blocks[name]
        if name.endswith(".mmd"):
            content = f"```mermaid\n{content}```\n"
        return match.group(1) + content + match.group(4)

    return _BLOCK.sub(body, text)


def outputs(root: Path) -> dict[Path, str]:
    """Every file this script owns or refreshes, with the content it should have."""
    blocks = generated()
    result = {root / "docs" / name: blocks[name] for name in blocks if name.endswith(".mmd")}
    for rel in MARKED_FILES:
        path = root / rel
        if path.exists():
            result[path] = refresh(path.read_text(encoding="utf-8"), blocks)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="write nothing; fail if stale")
    args = parser.parse_args(argv)
    stale = []
    for path, content in outputs(ROOT).items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == content:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.write_text(content, encoding="utf-8")
    verb = "stale" if args.check else "written"
    for rel in stale:
        print(f"{verb}: {rel}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
