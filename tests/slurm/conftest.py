"""A real single-node SLURM cluster for the tests in this folder (scripts/localslurm/start.sh and stop.sh).

Tests here are marked `slurm` automatically (`pytest -m "not slurm"` leaves them out). They skip, with the reason,
only when this machine cannot run SLURM at all (not root, no apt-get, packages not installable); a cluster that
should start but does not is a test failure. Set LOCALSLURM_KEEP=1 to leave the cluster running afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "localslurm"
SKIP_RC = 77  # start.sh: "cannot run on this machine"
START_TIMEOUT_S = 600  # a fresh machine apt-installs the packages first


@dataclass(frozen=True)
class SlurmCluster:
    """What tests need to know about the running cluster."""

    partition: str
    started_here: bool
    log: str


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs a real SLURM cluster (scripts/localslurm; root)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this folder `slurm` so `-m "not slurm"` deselects them."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slurm)


def _start() -> subprocess.CompletedProcess:
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("local SLURM needs root (scripts/localslurm/start.sh installs packages and runs the daemons)")
    if shutil.which("bash") is None:
        pytest.skip("local SLURM needs bash")
    try:
        return subprocess.run(["bash", str(SCRIPTS / "start.sh")], capture_output=True, text=True,
                              timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"scripts/localslurm/start.sh did not finish in {START_TIMEOUT_S}s: {e.stdout}{e.stderr}")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start SLURM (idempotent), yield, and stop it again if this session started it."""
    res = _start()
    log = res.stdout + res.stderr
    if res.returncode == SKIP_RC:
        pytest.skip(f"SLURM cannot start on this machine: {res.stderr.strip()}")
    if res.returncode != 0:
        pytest.fail(f"scripts/localslurm/start.sh failed (rc={res.returncode}):\n{log}")
    started_here = "start.sh: started" in res.stdout
    yield SlurmCluster(partition="debug", started_here=started_here, log=log)
    if started_here and os.environ.get("LOCALSLURM_KEEP") != "1":
        subprocess.run(["bash", str(SCRIPTS / "stop.sh")], capture_output=True, text=True, timeout=120)
