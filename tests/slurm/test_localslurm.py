"""Real jobs through the local SLURM cluster: a plain submitit job, and a Hydra multirun through farlab's
conf/hydra/launcher/slurm.yaml and conf/experiment/far_factorial.yaml, collected with farlab.collect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import submitit

from farlab import collect

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 90


def square_in_slurm(x: int) -> dict[str, Any]:
    """Runs inside the SLURM job: proves it ran there by returning SLURM's view of itself."""
    return {"value": x * x, "job_id": os.environ.get("SLURM_JOB_ID"),
            "partition": os.environ.get("SLURM_JOB_PARTITION")}


def wait_result(job: submitit.Job, timeout_s: float) -> Any:
    """job.result() with a deadline: a stuck job fails the test (with its logs) instead of hanging it."""
    deadline = time.time() + timeout_s
    while not job.done():
        if time.time() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} not done after {timeout_s}s (state {job.state})\n"
                        f"stdout: {job.stdout()}\nstderr: {job.stderr()}")
        time.sleep(0.5)
    return job.result()


def test_submitit_job(slurm_cluster, tmp_path: Path) -> None:
    # pickle this test module's function by value: the job's Python cannot import the test module
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        executor = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="slurm")
        executor.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=15, cpus_per_task=1,
                                   mem_gb=1)
        job = executor.submit(square_in_slurm, 7)
        out = wait_result(job, JOB_TIMEOUT_S)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert out == {"value": 49, "job_id": job.job_id, "partition": "debug"}


APP = '''
"""Tiny stand-in for farlab.train: writes a schema-correct run dir (docs/run_dir.md) and returns the metric."""
import json, os
import hydra
from hydra.core.hydra_config import HydraConfig
from hydra_plugins.farlab_sweeper import register
from omegaconf import OmegaConf

register()  # hydra/sweeper=farlab, which far_factorial selects (farlab.train registers it the same way)
MCC = {"combined_f": 0.2, "combined_far": 0.3}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    out = HydraConfig.get().runtime.output_dir   # Hydra 1.3 does not chdir
    env = os.environ
    meta = {"status": "completed", "error": None, "seed": cfg.seed, "task": cfg.task.name,
            "model": cfg.model.name, "loss": cfg.loss.name, "teacher_strategy": cfg.teacher_strategy.name,
            "overrides": list(HydraConfig.get().overrides.task),
            "slurm": {"job_id": env.get("SLURM_JOB_ID"), "array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
                      "array_task_id": env.get("SLURM_ARRAY_TASK_ID")},
            "launcher": HydraConfig.get().launcher._target_}
    mcc = MCC[cfg.loss.name]
    metrics = {"task": cfg.task.name, "primary_metric": "mcc",
               "pre": {"teacher": {"mcc": 0.5}, "student": {"mcc": 0.0}},
               "post": {"student": {"mcc": mcc}},
               "transfer_gap": {"metric": "mcc", "teacher_advantage": 0.5, "student_gain": mcc,
                                "transfer_efficiency": mcc / 0.5, "transfer_efficiency_note": None},
               "train": {"runtime_s": 1.0}}
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(OmegaConf.to_yaml(cfg, resolve=True))
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    with open(os.path.join(out, "run_metadata.json"), "w") as f:
        json.dump(meta, f)
    return mcc


if __name__ == "__main__":
    main()
'''

CONFIG = '''
defaults:
  - loss: combined_f
  - teacher_strategy: frozen_sft
  - override hydra/launcher: slurm
  - _self_
task: {{name: tiny}}
model: {{name: tiny}}
seed: 0
hydra:
  searchpath:
    - file://{search}
  launcher:
    timeout_min: 15
    mem_gb: 1
'''


def write_app(root: Path) -> Path:
    """The app, its own loss/teacher_strategy options, and a search-path dir holding farlab's real launcher and
    experiment files (symlinked, so the repo's YAML is what Hydra loads; nothing else of farlab's conf leaks in)."""
    app = root / "app"
    search = root / "farlab_conf"
    for rel in ("hydra/launcher/slurm.yaml", "experiment/far_factorial.yaml"):
        (search / rel).parent.mkdir(parents=True, exist_ok=True)
        (search / rel).symlink_to(REPO / "conf" / rel)
    (app / "conf" / "loss").mkdir(parents=True)
    (app / "conf" / "teacher_strategy").mkdir()
    far = "{feature: {weight: 1.0}, attention: {weight: 1.0}, response: {weight: 1.0}}"
    for loss, comps in (("combined_f", "{feature: {weight: 1.0}}"), ("combined_far", far)):
        (app / "conf" / "loss" / f"{loss}.yaml").write_text(f"name: {loss}\ncomponents: {comps}\n")
    (app / "conf" / "teacher_strategy" / "frozen_sft.yaml").write_text("name: frozen_sft\n")
    (app / "conf" / "config.yaml").write_text(textwrap.dedent(CONFIG.format(search=search)))
    (app / "app.py").write_text(APP)
    return app


def test_hydra_multirun_through_slurm_launcher(slurm_cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path)
    cmd = [sys.executable, "app.py", "-m", "+experiment=far_factorial",
           "loss=combined_f,combined_far", "teacher_strategy=frozen_sft", "seed=1"]
    res = subprocess.run(cmd, cwd=app, capture_output=True, text=True, timeout=JOB_TIMEOUT_S + 30)
    assert res.returncode == 0, f"multirun failed:\n{res.stdout}\n{res.stderr}"

    sweeps = sorted(app.glob("multirun/*/*"))  # far_factorial's multirun/<date>/<time>
    assert len(sweeps) == 1, sweeps
    sweep = sweeps[0]
    names = [f"loss={loss},seed=1,teacher_strategy=frozen_sft" for loss in ("combined_f", "combined_far")]
    metas = [json.loads((sweep / n / "run_metadata.json").read_text()) for n in names]
    assert all(m["launcher"].endswith("SlurmLauncher") for m in metas)
    array_ids = {m["slurm"]["array_job_id"] for m in metas}
    assert len(array_ids) == 1 and None not in array_ids, metas  # one job array, two tasks
    assert sorted(m["slurm"]["array_task_id"] for m in metas) == ["0", "1"]
    assert (sweep / ".submitit").is_dir()  # launcher.submitit_folder lives inside the sweep dir

    summary = collect.collect([str(sweep)], plots=False)
    assert sorted((r.loss, r.flags["A"], r.metrics["post_student_mcc"]) for r in summary.runs) == [
        ("combined_f", 0, 0.2), ("combined_far", 1, 0.3)]
    assert summary.skipped == []
