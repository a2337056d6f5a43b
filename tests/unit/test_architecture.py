"""The architecture's rules, checked: imports point down (import-linter), one place decides what a loss needs,
and the run's wiring stays readable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "farlab"


def test_import_layers_contract_is_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--config", str(REPO / ".importlinter")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_component_types_are_not_matched_by_name_outside_the_losses_package():
    """What a component needs is declared on its class and asked through LossPlan, never re-derived by name."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if PACKAGE / "losses" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and node.left.attr == "type":
                consts = [c.value for c in node.comparators if isinstance(c, ast.Constant)]
                if set(consts) & {"response", "feature", "attention"}:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_task_kinds_are_not_branched_on_by_name():
    """A new task kind is one TaskKind record (farlab/data/kinds.py): nobody else compares kind names."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "data" / "kinds.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if set(consts) & {"classification", "causal_lm", "vision_lm"}:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_train_py_functions_stay_short():
    tree = ast.parse((PACKAGE / "train.py").read_text())
    long = [(f.name, f.end_lineno - f.lineno + 1) for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef) and f.end_lineno - f.lineno + 1 > 60]
    assert not long, long
