"""The workbench on real tiny run dirs made by real training runs (trained once per module).

Every tool runs end to end through the CLI; the numbers it reports are checked against what the run itself wrote
(metrics.json) or against an independent computation, and the run dir is checked to be untouched outside
workbench/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from farlab.eval.loop import evaluate_model
from farlab.workbench.cli import main
from farlab.workbench.loading import open_run
from farlab.workbench.similarity import linear_cka
from tests.conftest import train_runs

TRANSLATION = {"task": "europarl_en_fr", "model": "tiny_llama", "task.train_limit": 48, "task.eval_limit": 6,
               "task.generation.max_new_tokens": 6, "task.max_length": 96}
RUNS = {
    "kd": {"loss": "combined_fr", "teacher_strategy": "frozen_sft"},  # features + response, frozen SFT teacher
    "ce": {"loss": "combined_ce"},  # its CE-only twin
    "cotrain": {"loss": "response_kl", "teacher_strategy": "cotrain_base",
                "teacher_strategy.cotrain.learning_rate": 1e-3},
    "base": {"loss": "response_kl", "teacher_strategy": "frozen_base"},
    "gen": {**TRANSLATION, "loss": "response_kl", "teacher_strategy": "frozen_base"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return train_runs(tmp_path_factory.mktemp("workbench_runs"), RUNS)


def snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file outside workbench/ with its size and modification time."""
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*")
            if p.is_file() and "workbench" not in p.relative_to(run_dir).parts}


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("workbench", "checkpoint-*"))
    return dst


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_all_tools_on_a_distilled_run_agree_with_what_the_run_wrote(runs):
    kd, ce = runs["kd"], runs["ce"]
    before = snapshot(kd)
    assert main(["all", str(kd), "--baseline", str(ce), "--no-progress"]) == 0
    assert snapshot(kd) == before  # nothing outside workbench/ changed
    out = kd / "workbench"
    for tool, files in {"probe": ("probe.json", "probe.csv", "probe.png"), "cka": ("cka.json", "cka.csv", "cka.png"),
                        "disagree": ("disagree.json", "disagree.csv", "reliability.png", "disagreements.md"),
                        "headft": ("headft.json", "headft.csv", "headft.png")}.items():
        for name in files:
            assert (out / tool / name).stat().st_size > 0, f"{tool}/{name}"
        assert "SFT teacher store entry" in read(out / tool / f"{tool}.json")["models"]["teacher"]["source"]
    assert set(read(out / "all.json")["wall_s"]) == {"probe", "cka", "disagree", "headft"}
    metrics = read(kd / "metrics.json")

    # disagree evaluates the same teacher and student as the run did (pre-eval teacher, post-eval student)
    evaluations = read(out / "disagree" / "disagree.json")["evaluations"]
    for role, phase in (("teacher", "pre"), ("student", "post")):
        for key in ("mcc", "accuracy", "nll", "ece", "mean_confidence"):
            assert evaluations[role][key] == pytest.approx(metrics[phase][role][key], abs=1e-9), (role, key)

    # headft's "as trained" scores apply each model's own head to the cached features: the run's own numbers
    headft = read(out / "headft" / "headft.json")
    assert headft["results"]["student_after"]["as_trained"]["mcc"] == pytest.approx(metrics["post"]["student"]["mcc"])
    assert headft["results"]["teacher"]["as_trained"]["mcc"] == pytest.approx(metrics["pre"]["teacher"]["mcc"])
    assert set(headft["results"]) == {"student_after", "baseline", "teacher"}
    assert headft["summary"]["headft_diagnosis"].split(":")[0] in ("alignment", "capacity", "no gap")

    # probe: one row per (model, layer, pooling): teacher 0..4, students 0..2
    probe = read(out / "probe" / "probe.json")
    assert len(probe["layers"]) == (5 + 3 + 3) * 2
    assert all(-1 <= r["mcc"] <= 1 for r in probe["layers"])


def test_rebuilt_initial_student_is_the_one_the_run_started_from(runs):
    ctx = open_run(runs["kd"], "cpu")
    metrics = read(runs["kd"] / "metrics.json")
    assert evaluate_model(ctx.student_before().model, ctx.data, 32, progress=False) == metrics["pre"]["student"]


def test_cka_numbers_match_an_independent_forward(runs):
    kd = runs["kd"]
    assert main(["cka", str(kd), "--limit", "24", "--seed", "5", "--no-progress"]) == 0
    report = read(kd / "workbench" / "cka" / "cka.json")
    ctx = open_run(kd, "cpu")
    rows = sorted(np.random.default_rng(5).choice(len(ctx.data.eval), size=24, replace=False).tolist())
    batch = ctx.data.collator([ctx.data.eval[i] for i in rows])
    batch.pop("labels")
    mask = batch["attention_mask"].unsqueeze(-1).float()

    def pooled(model, layer):
        with torch.no_grad():
            h = model(**batch, output_hidden_states=True).hidden_states[layer]
        return ((h * mask).sum(1) / mask.sum(1)).numpy()

    expected = linear_cka(pooled(ctx.student_after().model, 2), pooled(ctx.teacher().model, 4))
    assert report["matrices"]["student_after"]["example"][2][4] == pytest.approx(expected, abs=1e-5)
    assert report["layer_map_used"] == [[1, 2], [2, 4]]  # uniform 2 -> 4 blocks
    assert len(report["suggested_map"]["student_before"]) == 2


def test_cotrained_run_saves_its_final_teacher_and_the_tools_use_it(runs):
    run = runs["cotrain"]
    metrics = read(run / "metrics.json")
    ctx = open_run(run, "cpu")
    reloaded = AutoModelForSequenceClassification.from_pretrained(run / "final_teacher")
    assert evaluate_model(reloaded, ctx.data, 32, progress=False) == metrics["post"]["teacher"]
    assert main(["headft", str(run), "--epochs", "1", "--no-progress"]) == 0
    report = read(run / "workbench" / "headft" / "headft.json")
    assert "final_teacher/" in report["models"]["teacher"]["source"]
    assert report["results"]["teacher"]["as_trained"]["mcc"] == pytest.approx(metrics["post"]["teacher"]["mcc"])


def test_probe_on_a_base_teacher_says_its_head_is_random_and_keeps_to_the_chosen_layers(runs):
    run = runs["base"]
    args = ["probe", str(run), "--teacher-layers", "0,4", "--student-layers", "2", "--limit", "32", "--no-progress"]
    assert main(args) == 0
    report = read(run / "workbench" / "probe" / "probe.json")
    assert "random head" in report["models"]["teacher"]["note"]
    assert {(r["model"], r["layer"]) for r in report["layers"]} == {
        ("teacher", 0), ("teacher", 4), ("student_before", 2), ("student_after", 2)}
    assert report["train_examples"] == 32


def test_generation_run_disagree_lists_worst_examples_and_headft_refuses(runs, capsys):
    run = runs["gen"]
    assert main(["disagree", str(run), "--top", "3", "--no-progress"]) == 0
    report = read(run / "workbench" / "disagree" / "disagree.json")
    assert report["eval_examples"] == 6 and len(report["worst_examples"]) == 3
    deltas = [e["delta"] for e in report["worst_examples"]]
    assert deltas == sorted(deltas)
    assert (run / "workbench" / "disagree" / "disagreements.md").read_text().count("\n|") >= 4
    before = snapshot(run)
    assert main(["headft", str(run), "--no-progress"]) == 2
    assert "causal-LM run" in capsys.readouterr().err
    assert not (run / "workbench" / "headft").exists() and snapshot(run) == before


@pytest.mark.parametrize("case", ["running", "failed", "no_final", "layer", "no_final_teacher", "no_store"])
def test_bad_input_is_a_clear_error_and_changes_nothing(runs, tmp_path, capsys, case):
    source = runs["cotrain"] if case == "no_final_teacher" else runs["kd"]
    run = copy_run(source, tmp_path / "run")
    args, expected = ["cka", str(run), "--no-progress"], ""
    meta = read(run / "run_metadata.json")
    if case in ("running", "failed"):
        meta.update(status=case, error="RuntimeError: boom" if case == "failed" else None)
        (run / "run_metadata.json").write_text(json.dumps(meta))
        expected = f"status '{case}', not 'completed'"
    elif case == "no_final":
        shutil.rmtree(run / "final")
        expected = "has no final/"
    elif case == "layer":
        args += ["--teacher-layers", "0,9"]
        expected = "--teacher-layers: layer 9 is out of range for the teacher (4 blocks): valid 0..4"
    elif case == "no_final_teacher":
        shutil.rmtree(run / "final_teacher")
        expected = "no final_teacher/"
    else:  # the run's SFT teacher is not in the store it names
        config = (run / "config.yaml").read_text()
        (run / "config.yaml").write_text(config.replace(str(source.parent / "store"), str(tmp_path / "empty_store")))
        expected = "the SFT teacher of this run is not in the store"
    before = snapshot(run)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert snapshot(run) == before and not (run / "workbench").exists()


def test_sweep_writes_one_summary_and_skips_unfinished_runs(runs, tmp_path):
    sweep = tmp_path / "sweep"
    copy_run(runs["kd"], sweep / "loss=combined_fr")
    copy_run(runs["ce"], sweep / "loss=combined_ce")
    failed = copy_run(runs["ce"], sweep / "loss=broken")
    meta = read(failed / "run_metadata.json")
    (failed / "run_metadata.json").write_text(json.dumps({**meta, "status": "failed", "error": "OOM"}))
    assert main(["cka", "--sweep", str(sweep), "--limit", "16", "--no-progress"]) == 0
    summary = read(sweep / "workbench" / "cka_summary.json")
    assert sorted(r["cell"] for r in summary["runs"]) == ["ce", "fr"]
    assert [s["run_dir"] for s in summary["skipped"]] == ["loss=broken"] and "failed" in summary["skipped"][0]["reason"]
    kd_row = next(r for r in summary["runs"] if r["cell"] == "fr")
    assert kd_row["student_ece"] == read(runs["kd"] / "metrics.json")["post"]["student"]["ece"]
    assert kd_row["cka_mapped_after"] is not None and (sweep / "workbench" / "cka_summary.csv").is_file()
    assert (sweep / "loss=combined_fr" / "workbench" / "cka" / "cka.json").is_file()


def test_keep_final_false_also_drops_the_final_teacher(runs, tmp_path):
    from farlab.trainer.checkpoints import prune_completed_run

    run = copy_run(runs["cotrain"], tmp_path / "run")
    removed = prune_completed_run(run, "none", keep_final=False)
    assert {p.name for p in removed} >= {"final", "final_teacher"}
    assert not (run / "final").exists() and not (run / "final_teacher").exists()
