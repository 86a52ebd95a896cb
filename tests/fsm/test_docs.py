"""docs/: the generated diagrams and tables are fresh, match the reference, and the examples run."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fsm import DerivationMachine, JobMachine
from fsm.diagram import events_table, mermaid
from tests.fsm.reference import DRV_ALLOWED, JOB_ALLOWED, Row

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = ROOT / "docs"
SCRIPT = ROOT / "scripts" / "render_fsm_docs.py"
MACHINES: dict[str, type[DerivationMachine] | type[JobMachine]] = {
    "fsm-derivation": DerivationMachine,
    "fsm-job": JobMachine,
}


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_fsm_docs", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_committed_diagram_is_fresh(name: str) -> None:
    committed = (DOCS / f"{name}.mmd").read_text(encoding="utf-8")
    assert committed == mermaid(MACHINES[name]), (
        f"docs/{name}.mmd is stale: run .venv/bin/python scripts/render_fsm_docs.py"
    )


def _blocks(text: str) -> dict[str, str]:
    pattern = r"<!-- BEGIN (fsm-[\w.-]+) -->\n(.*?)<!-- END \1 -->"
    return {m[1]: m[2] for m in re.finditer(pattern, text, re.S)}


def test_fsm_md_embeds_the_diagrams_and_tables() -> None:
    blocks = _blocks((DOCS / "fsm.md").read_text(encoding="utf-8"))
    assert set(blocks) == {f"{n}.mmd" for n in MACHINES} | {f"{n}-events" for n in MACHINES}
    for name, machine in MACHINES.items():
        assert blocks[f"{name}.mmd"] == f"```mermaid\n{mermaid(machine)}```\n"
        assert blocks[f"{name}-events"] == events_table(machine)


def test_readme_blocks_if_any_are_fresh() -> None:
    readme = ROOT / "README.md"
    blocks = _blocks(readme.read_text(encoding="utf-8")) if readme.exists() else {}
    for name, machine in MACHINES.items():
        if f"{name}.mmd" in blocks:
            assert blocks[f"{name}.mmd"] == f"```mermaid\n{mermaid(machine)}```\n"


def test_the_script_check_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_script_rewrites_stale_files(tmp_path: Path) -> None:
    script = _script()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "fsm-job.mmd").write_text("stateDiagram-v2\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "# x\n<!-- BEGIN fsm-job.mmd -->\nold\n<!-- END fsm-job.mmd -->\nrest\n", encoding="utf-8"
    )
    out = {p.relative_to(tmp_path).as_posix(): text for p, text in script.outputs(tmp_path).items()}
    assert sorted(out) == ["README.md", "docs/fsm-derivation.mmd", "docs/fsm-job.mmd"]
    assert out["docs/fsm-job.mmd"] == mermaid(JobMachine)
    assert out["README.md"] == (
        "# x\n<!-- BEGIN fsm-job.mmd -->\n```mermaid\n"
        + mermaid(JobMachine)
        + "```\n<!-- END fsm-job.mmd -->\nrest\n"
    )


def _edges(diagram: str) -> set[tuple[str, str, str]]:
    edges = set()
    for line in diagram.splitlines()[1:]:
        m = re.fullmatch(r"    (\w+) --> (\w+) : (\w+)(?: \[.*\])?", line)
        if m:
            edges.add((m[1], m[3], m[2]))
        else:
            assert re.fullmatch(r"    (\[\*\] --> \w+|\w+ --> \[\*\])", line), line
    return edges


@pytest.mark.parametrize(
    ("machine", "table"), [(DerivationMachine, DRV_ALLOWED), (JobMachine, JOB_ALLOWED)]
)
def test_diagram_edges_are_the_reference_transitions(
    machine: type[DerivationMachine] | type[JobMachine], table: list[Row]
) -> None:
    diagram = mermaid(machine)
    assert _edges(diagram) == {(str(s), e, str(t)) for s, e, _, t in table}
    finals = {line.split()[0] for line in diagram.splitlines() if line.endswith("--> [*]")}
    assert finals == {s.id for s in machine.final_states}


def test_guards_are_labelled() -> None:
    diagram = mermaid(DerivationMachine)
    assert "build --> build : build_finished [retry_allowed]\n" in diagram
    assert "build --> failed : build_finished [not success and not retry_allowed]\n" in diagram
    assert "lookup --> waiting : lookup_done [not outputs_present]\n" in diagram


def test_python_examples_in_fsm_md_run() -> None:
    text = (DOCS / "fsm.md").read_text(encoding="utf-8")
    examples = re.findall(r"```python\n(.*?)```", text, re.S)
    assert examples, "docs/fsm.md lost its worked example"
    namespace: dict[str, object] = {"__name__": "fsm_md_example"}
    for example in examples:
        exec(compile(example, "docs/fsm.md", "exec"), namespace)
