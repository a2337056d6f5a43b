"""Every ``python -m farlab.*`` command answers --help with its usage and examples, and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from farlab.config import REPO_ROOT

PACKAGE = REPO_ROOT / "farlab"


def entry_points() -> list[str]:
    """Modules runnable with ``python -m``: a ``__main__`` block, or a package's ``__main__.py``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if path.name == "__main__.py":
            found.append(module.removesuffix(".__main__"))
        elif 'if __name__ == "__main__":' in path.read_text():
            found.append(module)
    return found


def test_the_known_commands_are_found():
    assert {"farlab.train", "farlab.collect", "farlab.teachers.cache", "farlab.teachers.serve",
            "farlab.teachers.generate"} <= set(entry_points())


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every command's ``--help``, each in a fresh interpreter (so an import error shows), a few at a time: the
    imports dominate and are single-threaded, so running them side by side saves suite time on any machine."""
    cwd = tmp_path_factory.mktemp("help")

    def run(module: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, "--help"], cwd=cwd, capture_output=True, text=True,
                              timeout=300)

    modules = entry_points()
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(zip(modules, pool.map(run, modules)))


@pytest.mark.parametrize("module", entry_points())
def test_help_prints_usage_and_exits_zero(module: str, helps):
    proc = helps[module]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "python -m " in proc.stdout and "Traceback" not in proc.stderr, proc.stdout[:500]
