"""Every FAR cell and a staged schedule, trained for real on tiny models through the Trainer."""

from __future__ import annotations

import json

import pytest

from farlab.train import execute
from tests.conftest import tiny_overrides

FAR_COMPONENTS = {
    "combined_ce": set(),
    "combined_f": {"feature"},
    "combined_a": {"attention"},
    "combined_r": {"response"},
    "combined_fr": {"feature", "response"},
    "combined_fa": {"feature", "attention"},
    "combined_ar": {"attention", "response"},
    "combined_far": {"feature", "attention", "response"},
}


@pytest.mark.parametrize("loss", sorted(FAR_COMPONENTS))
def test_each_far_cell_runs_three_steps_and_logs_exactly_its_components(compose_cfg, tmp_path, store_dir, loss):
    overrides = tiny_overrides(
        store_dir, loss=loss, teacher_strategy="frozen_base", **{"train.max_steps": 3, "train.logging_steps": 1}
    )
    metrics = execute(compose_cfg(overrides), tmp_path / loss, overrides)
    logged = {key.split("/")[0] for key in metrics["loss_components"]} - {"ce"}
    assert logged == FAR_COMPONENTS[loss]
    assert ("teacher" in metrics["pre"]) == bool(FAR_COMPONENTS[loss])  # combined_ce never loads a teacher
    for name in FAR_COMPONENTS[loss]:
        raw = metrics["loss_components"][f"{name}/raw"]
        assert raw > 0 and metrics["loss_components"][f"{name}/weighted"] == pytest.approx(0.5 * raw, rel=1e-5)
    history = json.loads((tmp_path / loss / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert all(f"loss/{n}/raw" in history[0] for n in FAR_COMPONENTS[loss])


def test_staged_schedule_switches_at_the_configured_step(compose_cfg, tmp_path, store_dir):
    # 10 steps, phases by fraction: response < 0.3, feature < 0.6, both after.
    overrides = tiny_overrides(
        store_dir,
        loss="staged_r_then_f",
        teacher_strategy="frozen_base",
        **{"train.max_steps": 10, "train.logging_steps": 1, "train.save_steps": 5},
    )
    execute(compose_cfg(overrides), tmp_path / "staged", overrides)
    state = json.loads((tmp_path / "staged" / "checkpoint-10" / "trainer_state.json").read_text())
    weights = {
        entry["step"]: (entry["loss/response/weight"], entry["loss/feature/weight"])
        for entry in state["log_history"]
        if "loss/response/weight" in entry
    }
    # The weight logged at step s was used for the update from s-1 to s (global_step before the update).
    assert [weights[s] for s in range(1, 11)] == [(1.0, 0.0)] * 3 + [(0.0, 1.0)] * 3 + [(1.0, 1.0)] * 4
