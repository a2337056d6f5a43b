"""farlab.collect on a synthetic sweep: 8 loss combos x 2 strategies x 2 seeds of schema-correct run dirs with
known metric values, plus failed / corrupt / running / preempted / incomplete job dirs that must be skipped."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from farlab import collect
from farlab.collect import tables as collect_tables
from farlab.collect.runs import far_flags, flags_from_name

REPO = Path(__file__).resolve().parents[2]
LOSS_BASE = {"combined_ce": 0.10, "combined_f": 0.20, "combined_a": 0.15, "combined_r": 0.25,
             "combined_fa": 0.22, "combined_fr": 0.40, "combined_ar": 0.30, "combined_far": 0.35}
STRAT_OFFSET = {"frozen_sft": 0.0, "cotrain_base": 0.03}
SEED_OFFSET = {1: 0.0, 2: 0.02}
TEACHER_MCC = 0.5
STD2 = 0.02 / math.sqrt(2)  # sample std of two values 0.02 apart
COMPONENT_KEYS = {"f": "feature", "a": "attention", "r": "response"}


def post_mcc(loss: str, strat: str, seed: int) -> float:
    return LOSS_BASE[loss] + STRAT_OFFSET[strat] + SEED_OFFSET[seed]


def write_run(job: Path, loss: str, strat: str, seed: int, status: str = "completed", *,
              metrics: bool = True, hydra_only: bool = False, end_time: str = "2026-11-26T03:00:00+00:00",
              mcc: float | None = None) -> Path:
    """One run dir as the trainer writes it (docs/run_dir.md)."""
    letters = loss.split("_", 1)[1]
    components = {} if letters == "ce" else {COMPONENT_KEYS[c]: {"weight": 1.0} for c in letters}
    cfg = {"task": {"name": "cola"}, "model": {"name": "minilm"}, "seed": seed,
           "loss": {"name": loss, "components": components}, "teacher_strategy": {"name": strat}}
    overrides = [f"loss={loss}", f"teacher_strategy={strat}", f"seed={seed}"]
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if not hydra_only:
        (job / "config.yaml").write_text(yaml.safe_dump(cfg))
    meta = {"status": status, "error": "RuntimeError: CUDA out of memory" if status == "failed" else None,
            "seed": seed, "task": "cola", "model": "minilm", "loss": loss, "teacher_strategy": strat,
            "overrides": overrides, "end_time": end_time, "slurm": None}
    (job / "run_metadata.json").write_text(json.dumps(meta))
    if metrics:
        mcc = post_mcc(loss, strat, seed) if mcc is None else mcc
        teacher = loss != "combined_ce"
        m = {"task": "cola", "primary_metric": "mcc",
             "pre": {"student": {"mcc": 0.0, "accuracy": 0.69}},
             "post": {"student": {"mcc": mcc, "accuracy": 0.6 + mcc}},
             "transfer_gap": {"metric": "mcc", "teacher_advantage": TEACHER_MCC if teacher else None,
                              "student_gain": mcc, "transfer_efficiency": mcc / TEACHER_MCC if teacher else None,
                              "transfer_efficiency_note": None if teacher else "no teacher"},
             "train": {"runtime_s": 100.0 + seed, "global_step": 10}, "peak_memory_mb": 123.5}
        if teacher:
            m["pre"]["teacher"] = {"mcc": TEACHER_MCC, "accuracy": 0.85}
        (job / "metrics.json").write_text(json.dumps(m))
    return job


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic sweep dir: 32 good runs (half with only .hydra/config.yaml) and 8 bad job dirs."""
    root = tmp_path_factory.mktemp("sweep")
    n = 0
    for loss in LOSS_BASE:
        for strat in STRAT_OFFSET:
            for seed in SEED_OFFSET:
                write_run(root / f"loss={loss},seed={seed},teacher_strategy={strat}", loss, strat, seed,
                          hydra_only=n % 2 == 1)
                n += 1
    write_run(root / "bad_failed", "combined_f", "frozen_sft", 3, "failed", metrics=False)
    write_run(root / "bad_running", "combined_f", "frozen_sft", 4, "running", metrics=False)
    write_run(root / "bad_preempted", "combined_f", "frozen_sft", 5, "preempted", metrics=False)
    write_run(root / "bad_nometrics", "combined_f", "frozen_sft", 6, metrics=False)
    corrupt = write_run(root / "bad_corrupt", "combined_f", "frozen_sft", 7, mcc=0.99)
    corrupt_text = (corrupt / "metrics.json").read_text()
    (corrupt / "metrics.json").write_text(corrupt_text[: len(corrupt_text) // 2])  # truncated JSON
    noconf = root / "bad_noconfig"
    noconf.mkdir()
    (noconf / "run_metadata.json").write_text(json.dumps({"status": "completed"}))
    badmeta = write_run(root / "bad_meta", "combined_f", "frozen_sft", 8, mcc=0.99)
    (badmeta / "run_metadata.json").write_text("{\"status\": ")
    (root / "bad_notstarted" / ".hydra").mkdir(parents=True)  # Hydra started the job, the trainer never did
    (root / "bad_notstarted" / ".hydra" / "config.yaml").write_text("task: {name: cola}\n")
    (root / ".submitit" / "123_0").mkdir(parents=True)  # launcher folder: must be ignored
    return root


@pytest.fixture(scope="module")
def collected(sweep: Path) -> collect.Summary:
    return collect.collect([str(sweep)])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_results_csv_has_one_row_per_completed_run(collected: collect.Summary, sweep: Path) -> None:
    rows = read_csv(sweep / "results.csv")
    assert len(rows) == 32
    assert {r["status"] for r in rows} == {"completed"}
    row = next(r for r in rows if r["loss"] == "combined_fr" and r["teacher_strategy"] == "cotrain_base"
               and r["seed"] == "2")
    assert row["run_dir"] == "loss=combined_fr,seed=2,teacher_strategy=cotrain_base"
    assert (row["task"], row["model"], row["F"], row["A"], row["R"]) == ("cola", "minilm", "1", "0", "1")
    assert float(row["post_student_mcc"]) == pytest.approx(0.45)
    assert float(row["pre_teacher_mcc"]) == TEACHER_MCC and float(row["pre_student_mcc"]) == 0.0
    assert float(row["transfer_efficiency"]) == pytest.approx(0.9)
    assert float(row["runtime_s"]) == 102.0
    ce = next(r for r in rows if r["loss"] == "combined_ce")
    assert (ce["F"], ce["A"], ce["R"], ce["transfer_efficiency"]) == ("0", "0", "0", "")
    assert ce["transfer_efficiency_note"] == "no teacher"
    # FAR order of rows, frozen_sft before cotrain_base
    order = list(dict.fromkeys(r["loss"] for r in rows))
    assert order == list(collect_tables.LOSS_ORDER)


def test_flags_for_every_combination(collected: collect.Summary) -> None:
    for run in collected.runs:
        letters = run.loss.split("_", 1)[1]
        expected = {f: int(f.lower() in letters) for f in "FAR"} if letters != "ce" else {"F": 0, "A": 0, "R": 0}
        assert run.flags == expected, run.loss


@pytest.mark.parametrize("loss,cfg,expected", [
    ("combined_far", None, (1, 1, 1)), ("combined_ce", None, (0, 0, 0)), ("response_kl", None, (0, 0, 1)),
    ("feature_mse", None, (1, 0, 0)), ("attention_kl", None, (0, 1, 0)), ("staged_fr", None, (1, 0, 1)),
    ("gkd", None, (None, None, None)),
    ("staged_x", {"components": {"feature": {"weight": 1}, "response": {"weight": 0}}}, (1, 0, 0)),
    ("my_loss", {"components": [{"kind": "attention"}, "response_kl"]}, (0, 1, 1)),
    ("combined_far", {"components": {"feature": None, "attention": {}, "response": {"enabled": False}}}, (0, 1, 0)),
    ("x", {"components": {"main": {"type": "response"}, "aux": {"type": "feature", "weight": 0.5}}}, (1, 0, 1)),
    ("combined_far", {"alpha": 0.0, "components": {"feature": {}, "response": {}}}, (0, 0, 0)),
])
def test_far_flags(loss: str, cfg: dict | None, expected: tuple) -> None:
    assert tuple(far_flags(loss, cfg).values()) == expected
    if cfg is None:
        assert tuple(flags_from_name(loss).values()) == expected


@pytest.mark.parametrize("path", sorted((REPO / "conf" / "loss").glob("*.yaml")), ids=lambda p: p.stem)
def test_flags_of_the_shipped_loss_configs(path: Path) -> None:
    """conf/loss/*.yaml: the components agree with the naming convention wherever the name implies flags."""
    cfg = yaml.safe_load(path.read_text())
    by_name = flags_from_name(cfg["name"])
    if None not in by_name.values() and not cfg["name"].startswith("staged_"):
        assert far_flags(cfg["name"], cfg) == by_name


def md_row(md: str, metric: str, loss: str) -> list[str]:
    """Cells of one loss row in the Markdown table of `metric`."""
    section = md.split(f"### {metric}\n", 1)[1].split("\n\n", 1)[0].strip()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == loss:
            return cells
    raise AssertionError(f"no row {loss} in {metric}")


def test_markdown_means_std_and_best(collected: collect.Summary, sweep: Path) -> None:
    md = (sweep / "results.md").read_text(encoding="utf-8")
    header = md.split("### post_student_mcc\n", 1)[1].split("\n\n", 1)[0].strip().splitlines()[0]
    assert header == "| loss | FAR | frozen_sft | cotrain_base |"
    for loss, base in LOSS_BASE.items():
        cells = md_row(md, "post_student_mcc", loss)
        for strat, cell in zip(STRAT_OFFSET, cells[2:]):
            mean = base + STRAT_OFFSET[strat] + 0.01
            text = f"{mean:.4f} ± {STD2:.4f} (n=2)"
            best = loss == "combined_fr" and strat == "cotrain_base"
            assert cell == (f"**{text}**" if best else text), (loss, strat)
    assert md_row(md, "post_student_mcc", "combined_fr")[1] == "F-R"
    bold_cells = sum(ln.count("**") // 2 for ln in md.splitlines() if ln.startswith("| combined_"))
    assert bold_cells == len(collected.tables)  # exactly one best cell per table
    # gain/efficiency tables exist; combined_ce has no efficiency (no teacher)
    assert "### student_gain" in md and "### transfer_efficiency" in md
    assert md_row(md, "transfer_efficiency", "combined_fr")[3] == f"**{0.88:.4f} ± {STD2 / TEACHER_MCC:.4f} (n=2)**"
    with pytest.raises(AssertionError):
        md_row(md, "transfer_efficiency", "combined_ce")


def test_latex_marks_best(collected: collect.Summary, sweep: Path) -> None:
    tex = (sweep / "results.tex").read_text(encoding="utf-8")
    first = tex.split(r"\end{table}")[0]
    assert r"post\_student\_mcc" in first
    line = next(ln for ln in first.splitlines() if ln.startswith(r"combined\_fr &"))
    assert line.endswith(rf"\textbf{{0.4400 $\pm$ {STD2:.4f} ($n$=2)}} \\")
    assert first.count(r"\textbf") == 1


def test_skipped_runs_listed_with_reasons(collected: collect.Summary, sweep: Path) -> None:
    rows = {r["run_dir"]: r for r in read_csv(sweep / "skipped.csv")}
    assert set(rows) == {"bad_failed", "bad_running", "bad_preempted", "bad_nometrics", "bad_corrupt",
                         "bad_noconfig", "bad_meta", "bad_notstarted"}
    assert rows["bad_failed"]["status"] == "failed" and "CUDA out of memory" in rows["bad_failed"]["reason"]
    assert rows["bad_running"]["status"] == "running"
    assert rows["bad_preempted"]["status"] == "preempted"
    assert "metrics.json is missing" in rows["bad_nometrics"]["reason"]
    assert rows["bad_corrupt"]["status"] == "corrupt" and "corrupt metrics.json" in rows["bad_corrupt"]["reason"]
    assert "missing config" in rows["bad_noconfig"]["reason"]
    assert "corrupt run_metadata.json" in rows["bad_meta"]["reason"]
    assert rows["bad_notstarted"]["status"] == "not started" and rows["bad_notstarted"]["task"] == "cola"
    md = (sweep / "results.md").read_text(encoding="utf-8")
    assert "## Skipped runs" in md and "`bad_corrupt` | corrupt |" in md
    # the corrupt runs' 0.99 never reached a mean
    assert "0.99" not in (sweep / "results.csv").read_text()


def test_byte_identical_on_rerun(collected: collect.Summary, sweep: Path, tmp_path: Path) -> None:
    first = {f.name: f.read_bytes() for f in collected.files}
    again = collect.collect([str(sweep)])
    assert [f.name for f in again.files] == list(first)
    assert any(name.endswith(".png") for name in first)
    for f in again.files:
        assert f.read_bytes() == first[f.name], f"{f.name} differs between two runs"


def test_plain_python_aggregation_matches_pandas(sweep: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if collect_tables._pd is None:
        pytest.skip("pandas not installed: the plain path is the only path")
    collect.collect([str(sweep)], out=str(tmp_path / "pd"), plots=False)
    monkeypatch.setattr(collect_tables, "_pd", None)
    collect.collect([str(sweep)], out=str(tmp_path / "py"), plots=False)
    for name in ("results.md", "results.tex", "results.csv"):
        assert (tmp_path / "pd" / name).read_text() == (tmp_path / "py" / name).read_text()


def test_duplicates_across_resubmitted_sweeps(tmp_path: Path) -> None:
    old, new = tmp_path / "sweep1", tmp_path / "sweep2"
    write_run(old / "0", "combined_f", "frozen_sft", 1, mcc=0.1, end_time="2026-11-26T01:00:00+00:00")
    write_run(old / "1", "combined_f", "frozen_sft", 2, "failed", metrics=False)
    write_run(new / "0", "combined_f", "frozen_sft", 1, mcc=0.3, end_time="2026-11-26T05:00:00+00:00")
    write_run(new / "1", "combined_f", "frozen_sft", 2, mcc=0.5)
    s = collect.collect([str(tmp_path / "sweep*")], out=str(tmp_path / "out"), plots=False)
    assert sorted((r.run_dir, r.metrics["post_student_mcc"]) for r in s.runs) == [
        ("../sweep2/0", 0.3), ("../sweep2/1", 0.5)]
    assert {(k.run_dir, k.status) for k in s.skipped} == {("../sweep1/0", "duplicate"), ("../sweep1/1", "failed")}


def test_metric_option_and_nested_job_dirs(tmp_path: Path) -> None:
    write_run(tmp_path / "task=a" / "b", "combined_r", "frozen_sft", 1)  # '/' in an override value nests dirs
    write_run(tmp_path / "task=a", "combined_f", "frozen_sft", 1)
    s = collect.collect([str(tmp_path)], metric="accuracy", plots=False)
    assert [t.metric for t in s.tables] == ["post_student_accuracy"]
    assert sorted(r.run_dir for r in s.runs) == ["task=a", "task=a/b"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "farlab.collect", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    res = run_cli(str(sweep), "--out", str(out), "--no-plots")
    assert res.returncode == 0, res.stderr
    assert "combined_fr" in res.stdout and "[corrupt]" in res.stdout
    assert "32 runs used, 8 skipped" in res.stdout
    assert (out / "results.csv").read_text() == read_csv_text_relocated(sweep, out)
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli(str(empty))
    assert res.returncode == 2 and "no job dir" in res.stderr
    res = run_cli(str(tmp_path / "does-not-exist"))
    assert res.returncode == 2 and "no such directory" in res.stderr
    only_failed = tmp_path / "failed"
    write_run(only_failed / "0", "combined_f", "frozen_sft", 1, "failed", metrics=False)
    res = run_cli(str(only_failed), "--no-plots")
    assert res.returncode == 1 and "no completed run" in res.stderr and "CUDA out of memory" in res.stdout


def read_csv_text_relocated(sweep: Path, out: Path) -> str:
    """results.csv of the sweep with run_dir paths re-expressed relative to `out` (same content otherwise)."""
    prefix = Path(os.path.relpath(sweep, out)).as_posix() + "/"
    lines = (sweep / "results.csv").read_text().splitlines(keepends=True)
    rows = [lines[0]] + [(prefix + ln) if not ln.startswith('"') else '"' + prefix + ln[1:] for ln in lines[1:]]
    return "".join(rows)


def test_main_effects_and_interactions(collected: collect.Summary, sweep: Path) -> None:
    from farlab.collect.plots import effects

    rows = [collect_tables.run_row(r) for r in collected.runs]
    eff = effects(rows, "post_student_mcc")
    shift = sum(STRAT_OFFSET.values()) / 2 + sum(SEED_OFFSET.values()) / 2  # mean strategy + seed offset

    def mean_of(pred) -> float:
        vals = [b for loss, b in LOSS_BASE.items() if pred(loss.split("_", 1)[1].replace("ce", ""))]
        return sum(vals) / len(vals) + shift

    off, on = eff["main"]["F"]
    assert off == pytest.approx(mean_of(lambda s: "f" not in s)) and on == pytest.approx(mean_of(lambda s: "f" in s))
    # F x R panel, R on, F off -> combined_r and combined_ar
    assert eff["interactions"][("F", "R")][1][0] == pytest.approx((0.25 + 0.30) / 2 + shift)
