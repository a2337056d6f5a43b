"""farlab's sweeper (hydra/sweeper=farlab): what a far_factorial multirun really launches.

The sweeps run through Hydra's own multirun machinery (config composition, the sweeper, the basic launcher,
job dirs); only the task function is a stub that records each job's composed config instead of training.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from farlab.atomic import publish
from farlab.config import REPO_ROOT, dotted_leaves, register_configs
from farlab.run_lock import LOCK_NAME
from farlab.run_record import RunRecord, irrelevant_key
from hydra_plugins.farlab_sweeper.farlab_sweeper import canonical_form, needs_teacher
from tests.unit.test_run_lock import held_by_another_process

STRATEGIES = ("frozen_sft", "frozen_base", "cotrain_sft", "cotrain_base")
QUIET = ["hydra/job_logging=none", "hydra/hydra_logging=none"]  # leave the test process's logging alone


def multirun(sweep_dir: Path, overrides: list[str], task: Callable[[DictConfig], float] | None = None) -> list[DictConfig]:
    """``python -m farlab.train -m <overrides>`` in-process, recording each launched job's config (and passing it
    to ``task`` when given)."""
    register_configs()
    launched: list[DictConfig] = []

    def record(cfg: DictConfig) -> float:
        job = cfg.copy()
        with open_dict(job):
            job.job_num = HydraConfig.get().job.num  # the number the launcher gave it
        launched.append(job)
        return task(cfg) if task else 0.0

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        GlobalHydra.instance().hydra.multirun(
            config_name="config",
            task_function=record,
            overrides=[*overrides, f"hydra.sweep.dir={sweep_dir}", *QUIET],
            with_log_configuration=False,
        )
    return launched


def cells(launched: list[DictConfig]) -> list[tuple[str, str, int]]:
    return [(c.loss.name, c.teacher_strategy.name, c.seed) for c in launched]


def test_ce_runs_once_per_seed_and_every_other_job_gets_its_dir(tmp_path, caplog):
    """A slice of far_factorial (CE plus two cells) over two seeds, launched: CE once per seed, not once in all.
    The full grid's count (29 per seed) is the dry-run test's; launching all 64 here only repeats the rule."""
    caplog.set_level(logging.INFO, logger="farlab.sweeper")
    sliced = ("combined_f", "combined_far")
    launched = multirun(tmp_path / "sweep", ["+experiment=far_factorial", "loss=combined_ce,combined_f,combined_far",
                                             "seed=1,2"])

    want = [(loss, s, seed) for loss, s, seed in itertools.product(sliced, STRATEGIES, (1, 2))]
    want += [("combined_ce", "frozen_sft", seed) for seed in (1, 2)]  # the first CE job of each seed, sweep order
    assert sorted(cells(launched)) == sorted(want)
    assert len(launched) == 2 * 9
    # Every job that ran got its own dir, named from the swept keys; the dropped ones got none.
    job_dirs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if (p / ".hydra").is_dir())
    assert job_dirs == sorted(f"loss={loss},seed={seed},teacher_strategy={s}" for loss, s, seed in want)
    # The experiment's retention preset reached the jobs.
    assert {c.train.keep_checkpoints for c in launched} == {"none"}

    dropped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("  dropped")]
    assert len(dropped) == 6
    for seed, strategy in itertools.product((1, 2), STRATEGIES[1:]):
        job = f"loss=combined_ce teacher_strategy={strategy} seed={seed}"  # +experiment=.. is shown once
        same = f"loss=combined_ce teacher_strategy=frozen_sft seed={seed}"
        assert f"  dropped {job} (same experiment as {same})" in dropped
    assert "6 of 24 jobs dropped as duplicates" in caplog.text


def test_a_grid_without_teacher_free_jobs_is_untouched(tmp_path):
    launched = multirun(tmp_path / "sweep", ["+experiment=far_factorial", "loss=combined_r,combined_fa"])
    assert sorted(cells(launched)) == sorted(itertools.product(("combined_r", "combined_fa"), STRATEGIES, (42,)))


def test_the_rule_comes_from_the_loss_config_not_its_name(tmp_path):
    """combined_r with alpha 0 distils nothing: its strategies collapse too; with alpha 0.5 they do not."""
    launched = multirun(
        tmp_path / "sweep",
        [
            "+experiment=far_factorial",
            "loss=combined_r",
            "loss.alpha=0.0,0.5",
            "teacher_strategy=frozen_sft,cotrain_base",
        ],
    )
    got = sorted((c.loss.alpha, c.teacher_strategy.name) for c in launched)
    assert got == [(0.0, "frozen_sft"), (0.5, "cotrain_base"), (0.5, "frozen_sft")]


def test_dry_run_lists_the_jobs_and_launches_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="farlab.sweeper")
    launched = multirun(tmp_path / "sweep", ["+experiment=far_factorial", "hydra.sweeper.dry_run=true"])
    assert launched == [] and not (tmp_path / "sweep").exists()
    assert (
        "dry run: 29 jobs would be launched (nothing launched); overrides of every job: seed=42 +experiment"
        in caplog.text
    )
    listed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("  #")]
    assert len(listed) == 29 and listed[0] == "  #0 : loss=combined_f teacher_strategy=frozen_sft -> starts"
    assert listed[-1] == "  #28 : loss=combined_ce teacher_strategy=frozen_sft -> starts"
    assert f"in {tmp_path / 'sweep'}: 29 starts" in caplog.text


def leave_as(state: str):
    """A task that leaves its run dir in ``state`` through farlab's own run record (what execute writes)."""

    def task(cfg: DictConfig) -> float:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        stored = cfg.copy()
        if state == "another config":
            stored.train.learning_rate = 1.0
        record = RunRecord(run_dir, cfg, [])
        record.start(stored)
        if state == "preempted":
            staged = run_dir / "staged"
            staged.mkdir()
            publish(staged, run_dir / "checkpoint-4")  # a complete checkpoint, as the trainer leaves one
        if state in ("completed", "another config"):
            record.write_metrics({"primary_metric": "mcc", "post": {"student": {"mcc": 0.2}}})
        record.finish({"another config": "completed"}.get(state, state))
        return 0.0

    return task


def test_dry_run_says_what_a_launch_would_do_with_each_run_dir(tmp_path, caplog):
    """The chunked-study question "what is left?": each job's state read from its run dir as execute() would."""
    caplog.set_level(logging.INFO, logger="farlab.sweeper")
    sweep, common = tmp_path / "sweep", ["+experiment=far_factorial", "teacher_strategy=frozen_base"]
    states = {"combined_r": "completed", "combined_f": "preempted", "combined_a": "failed",
              "combined_fa": "another config", "combined_fr": "completed"}
    for loss, state in states.items():
        multirun(sweep, [*common, f"loss={loss}"], task=leave_as(state))
    held = sweep / "loss=combined_fr,seed=42,teacher_strategy=frozen_base"
    every = "loss=combined_ce,combined_r,combined_f,combined_a,combined_fa,combined_fr"
    with held_by_another_process(held) as proc:
        caplog.clear()
        assert multirun(sweep, [*common, every, "hydra.sweeper.dry_run=true"]) == []
        holder = (held / LOCK_NAME).read_text().strip()
    assert holder.startswith(f"pid {proc.pid} on ")
    listed = {r.getMessage().split(" : ")[1] for r in caplog.records if r.getMessage().startswith("  #")}
    assert listed == {
        "loss=combined_ce -> starts",
        "loss=combined_r -> skips (completed)",
        "loss=combined_f -> resumes (was preempted, from checkpoint-4)",
        "loss=combined_a -> starts over (was failed, no complete checkpoint)",
        "loss=combined_fa -> fails (completed under another config: train.learning_rate: 1.0 -> 5e-05)",
        f"loss=combined_fr -> fails (busy: another live process holds it, {holder})",
    }
    assert f"in {sweep}: 1 skips, 1 resumes, 1 starts over, 1 starts, 2 fails" in caplog.text
    assert not (sweep / "loss=combined_ce,seed=42,teacher_strategy=frozen_base").exists()  # nothing launched

    # rerun/resume are left out of the job dir names: the same dirs, another decision.
    for flag, state in (("rerun=True", "starts over (was completed, no complete checkpoint)"),
                        ("resume=False", "starts over (was completed, resume=false)")):
        caplog.clear()
        multirun(sweep, [*common, "loss=combined_r", flag, "hydra.sweeper.dry_run=true"])
        assert f"+experiment=far_factorial {flag} -> {state}" in caplog.text


def test_needs_teacher_and_canonical_form(compose_cfg):
    ce = compose_cfg(["loss=combined_ce", "teacher_strategy=cotrain_base"])
    assert not needs_teacher(ce.loss) and needs_teacher(compose_cfg(["loss=combined_r"]).loss)
    assert not needs_teacher(OmegaConf.create({"alpha": 0.7, "components": {}}))
    # CE: the strategy is not part of the experiment; everything else (seed here) is.
    assert canonical_form(ce) == canonical_form(compose_cfg(["loss=combined_ce", "teacher_strategy=frozen_sft"]))
    assert canonical_form(ce) != canonical_form(compose_cfg(["loss=combined_ce", "seed=7"]))
    r = compose_cfg(["loss=combined_r", "teacher_strategy=frozen_sft"])
    assert canonical_form(r) != canonical_form(compose_cfg(["loss=combined_r", "teacher_strategy=frozen_base"]))


def test_an_unresolvable_job_is_kept_not_merged():
    cfg = OmegaConf.create({"loss": {"alpha": 0.0, "components": {}}, "x": "${oc.env:FARLAB_TEST_UNSET_VAR}"})
    assert canonical_form(cfg) is None


@pytest.mark.parametrize("max_batch_size", [None, 2])
def test_batches_are_cut_from_the_distinct_jobs(max_batch_size, tmp_path):
    """hydra.sweeper.max_batch_size batches the distinct jobs: job numbers stay 0..n-1 whatever was dropped."""
    launched = multirun(
        tmp_path / "sweep",
        [
            "+experiment=far_factorial",
            "loss=combined_ce,combined_r",
            f"hydra.sweeper.max_batch_size={max_batch_size or 'null'}",
        ],
    )
    assert sorted(cells(launched)) == sorted(
        [("combined_ce", "frozen_sft", 42), *(("combined_r", s, 42) for s in STRATEGIES)]
    )
    assert [c.job_num for c in launched] == list(range(5))


def test_job_dir_names_leave_out_exactly_the_settings_that_do_not_change_the_experiment():
    """far_factorial's exclude_keys and farlab.run_record.IRRELEVANT_KEYS agree: a re-launch that only changes
    threads, retention, rerun/resume or where things live finds the same job dirs (and skips or resumes there)."""
    from hydra import compose

    register_configs()
    leaves: set[str] = set()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        for teacher in ("hf", "cache", "openai", "self"):  # each teacher source brings its own irrelevant keys
            cfg = compose("config", overrides=["+experiment=far_factorial", f"teacher={teacher}"],
                          return_hydra_config=True)
            job = OmegaConf.to_container(cfg, resolve=False)
            job.pop("hydra")
            leaves |= {key for key in dotted_leaves(job) if irrelevant_key(key)}
    excluded = list(cfg.hydra.job.config.override_dirname.exclude_keys)
    assert len(excluded) == len(set(excluded)) and excluded[0] == "experiment"
    assert set(excluded[1:]) == leaves
    assert {"train.num_threads", "rerun", "teacher.cache.dir", "teacher.openai.api_key_env"} <= leaves
