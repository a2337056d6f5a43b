"""farlab.collect on a REAL tiny sweep (8 jobs of ``python -m farlab.train -m``: combined_ce/combined_f x
frozen_base/cotrain_base x 2 seeds, see collect_sweep.py) plus failed / corrupt / running / preempted / incomplete
job dirs derived from its run dirs, which must be skipped with their reason. Expected numbers are computed here
from the runs' own metrics.json files, independently of the collector."""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from farlab import collect
from farlab.collect import tables as collect_tables
from farlab.collect.factors import far_flags, flags_from_name
from farlab.collect.runs import flatten_metrics
from tests.unit.collect_sweep import (
    LOSSES,
    SEEDS,
    STRATEGIES,
    composed_loss,
    copy_sweep,
    job_name,
    read_json,
    real_sweep,
)

__all__ = ["real_sweep"]  # the session fixture, imported so pytest finds it here

REPO = Path(__file__).resolve().parents[2]
BAD = ("bad_failed", "bad_running", "bad_preempted", "bad_nometrics", "bad_corrupt", "bad_noconfig", "bad_meta",
       "bad_notstarted")


def derive(src: Path, dest: Path, seed: int, status: str | None = None, *, metrics: bool = True,
           error: str | None = None) -> Path:
    """A job dir made from a real one's files (no weights), with another seed and optionally another status."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / ".hydra", dest / ".hydra")
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    cfg["seed"] = seed
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    meta = read_json(src / "run_metadata.json")
    meta["seed"] = seed
    meta["overrides"] = [o for o in meta["overrides"] if not o.startswith("seed=")] + [f"seed={seed}"]
    if status:
        meta["status"], meta["error"] = status, error
    (dest / "run_metadata.json").write_text(json.dumps(meta))
    if metrics:
        shutil.copyfile(src / "metrics.json", dest / "metrics.json")
    return dest


@pytest.fixture(scope="module")
def sweep(real_sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the real sweep plus 8 bad job dirs and a launcher folder."""
    root = copy_sweep(real_sweep, tmp_path_factory.mktemp("collect") / "sweep")
    src = root / job_name("combined_f", "frozen_base", 1)
    derive(src, root / "bad_failed", 3, "failed", metrics=False, error="RuntimeError: CUDA out of memory")
    derive(src, root / "bad_running", 4, "running", metrics=False)
    derive(src, root / "bad_preempted", 5, "preempted", metrics=False)
    derive(src, root / "bad_nometrics", 6, metrics=False)
    corrupt = derive(src, root / "bad_corrupt", 7)
    m = read_json(corrupt / "metrics.json")
    m["post"]["student"]["mcc"] = 0.987654
    text = json.dumps(m)
    (corrupt / "metrics.json").write_text(text[: len(text) // 2])  # truncated JSON
    (root / "bad_noconfig").mkdir()
    (root / "bad_noconfig" / "run_metadata.json").write_text(json.dumps({"status": "completed"}))
    derive(src, root / "bad_meta", 8)
    (root / "bad_meta" / "run_metadata.json").write_text('{"status": ')
    (root / "bad_notstarted" / ".hydra").mkdir(parents=True)  # Hydra started the job, the trainer never did
    shutil.copyfile(src / ".hydra" / "config.yaml", root / "bad_notstarted" / ".hydra" / "config.yaml")
    (root / ".submitit" / "123_0").mkdir(parents=True)  # launcher folder: must be ignored
    return root


@pytest.fixture(scope="module")
def collected(sweep: Path) -> collect.Summary:
    return collect.collect([str(sweep)])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def real_metrics(sweep: Path, loss: str, strategy: str, seed: int) -> dict:
    return read_json(sweep / job_name(loss, strategy, seed) / "metrics.json")


def kept_jobs() -> list[tuple[str, str, int]]:
    """The runs the tables use: every combined_f job, and the CE baseline once per seed (its frozen_base copy:
    frozen_base comes before cotrain_base in the table order)."""
    return ([("combined_ce", "frozen_base", s) for s in SEEDS]
            + [("combined_f", st, s) for st in STRATEGIES for s in SEEDS])


def test_results_csv_has_one_row_per_used_run(collected: collect.Summary, sweep: Path) -> None:
    rows = read_csv(sweep / "results.csv")
    assert sorted((r["loss"], r["teacher_strategy"], int(r["seed"])) for r in rows) == sorted(kept_jobs())
    assert {r["status"] for r in rows} == {"completed"}
    for r in rows:
        m = real_metrics(sweep, r["loss"], r["teacher_strategy"], int(r["seed"]))
        assert r["run_dir"] == job_name(r["loss"], r["teacher_strategy"], int(r["seed"]))
        assert (r["task"], r["model"]) == ("cola", "tiny_bert")
        assert float(r["post_student_mcc"]) == pytest.approx(m["post"]["student"]["mcc"], abs=1e-9)
        assert float(r["post_student_accuracy"]) == pytest.approx(m["post"]["student"]["accuracy"], abs=1e-9)
        assert float(r["runtime_s"]) == pytest.approx(m["train"]["runtime_s"])
        assert float(r["train_global_step"]) == m["train"]["global_step"] == 4
        # the real schema: peak_memory_mb is a dict (farlab.trainer.resources); every entry becomes a column
        assert m["peak_memory_mb"]["cpu_rss"] > 0
        for key, val in m["peak_memory_mb"].items():
            assert float(r[f"peak_memory_mb_{key}"]) == pytest.approx(val)
        ce = r["loss"] == "combined_ce"
        assert (r["F"], r["A"], r["R"]) == (("0", "0", "0") if ce else ("1", "0", "0"))
        assert r["cell_strategy"] == ("shared" if ce else r["teacher_strategy"])
        # the recipe comes from config.yaml
        assert (r["max_steps"], r["learning_rate"], r["batch_size"], r["train_limit"]) == ("4", "5e-05", "8", "64")
        if "pre" in m and "teacher" in m["pre"]:
            assert float(r["pre_teacher_mcc"]) == pytest.approx(m["pre"]["teacher"]["mcc"])
    assert list(dict.fromkeys(r["loss"] for r in rows)) == list(LOSSES)  # FAR row order


def test_peak_memory_schema_old_and_new() -> None:
    new = flatten_metrics({"post": {"student": {"mcc": 0.1}}, "peak_memory_mb": {"cpu_rss": 1.5,
                                                                                  "cuda_allocated": 2.0}})
    assert (new["peak_memory_mb_cpu_rss"], new["peak_memory_mb_cuda_allocated"]) == (1.5, 2.0)
    assert "peak_memory_mb" not in new
    assert flatten_metrics({"peak_memory_mb": 123.5})["peak_memory_mb"] == 123.5  # older files: a bare number


def test_ce_copies_are_merged_into_one_shared_cell(collected: collect.Summary, sweep: Path) -> None:
    merged = {(k.run_dir, k.status) for k in collected.skipped if k.status == "merged"}
    assert merged == {(job_name("combined_ce", "cotrain_base", s), "merged") for s in SEEDS}
    reason = next(k.reason for k in collected.skipped if k.status == "merged")
    # the two copies are the same experiment: a real run gives the same metric under either strategy
    assert "CE baseline copy of loss=combined_ce,seed=" in reason and "post_student_mcc same" in reason
    primary = collected.tables[0]
    assert ("combined_ce", "shared") in primary.cells and primary.cells[("combined_ce", "shared")].n == len(SEEDS)
    md = (sweep / "results.md").read_text(encoding="utf-8")
    assert "2 of them are copies of the CE baseline under other teacher strategies, merged" in md


def section(md: str, title: str) -> str:
    """Text of one '### title' section of results.md."""
    return md.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]


def md_rows(text: str) -> dict[str, list[str]]:
    """Table rows of a section by their first cell."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| loss") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def expected_cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    body = f"{mean:.4f}".replace("-0.0000", "0.0000")
    return (body if std is None else f"{body} ± {std:.4f}") + f" (n={len(values)})"


def test_markdown_cells_headers_and_shared_baseline(collected: collect.Summary, sweep: Path) -> None:
    md = (sweep / "results.md").read_text(encoding="utf-8")
    text = section(md, "post_student_accuracy")
    rows = md_rows(text)
    assert text.count("| frozen_base | cotrain_base |") == 1
    vals = {(loss, st): [real_metrics(sweep, loss, st, s)["post"]["student"]["accuracy"] for s in SEEDS]
            for loss, st, _ in kept_jobs()}
    best = max(statistics.fmean(v) for v in vals.values())

    def shown(key: tuple[str, str]) -> str:
        text = expected_cell(vals[key])
        mcc = [real_metrics(sweep, key[0], key[1], s)["post"]["student"]["mcc"] for s in SEEDS]
        text += " †" if all(v == 0.0 for v in mcc) else ""  # MCC exactly 0: the student predicts one class
        return f"**{text}**" if statistics.fmean(vals[key]) == best else text

    assert rows["CE (shared baseline)"] == ["---", shown(("combined_ce", "frozen_base")), "(shared)"]
    assert rows["combined_f"] == ["F--", shown(("combined_f", "frozen_base")), shown(("combined_f", "cotrain_base"))]
    # what the table shows and cannot show, seeds, degenerate cells, recipe
    assert "- **Shows**: post-training student `post_student_accuracy`" in text
    assert "- **Cannot show**: whether a difference is larger than seed-to-seed noise" in text
    assert "- **Seeds per cell**: 2 (every cell)" in text
    assert "- **Recipe** (from the runs' config.yaml): max_steps 4, learning_rate 5e-05, batch_size 8, train_limit 64" \
        in text
    for title in ("post_student_mcc (primary)", "Paired differences vs the CE baseline: post_student_mcc",
                  "ANOVA (type II): post_student_mcc", "student_gain"):
        block = section(md, title)
        assert all(f"- **{k}**" in block for k in ("Shows", "Cannot show", "Seeds per cell", "Degenerate cells",
                                                    "Recipe")), title


def test_calibration_columns_follow_the_runs(collected: collect.Summary, sweep: Path) -> None:
    """ECE / mean confidence per cell when the runs' evaluations report them, no table otherwise."""
    md = (sweep / "results.md").read_text(encoding="utf-8")
    m = real_metrics(sweep, "combined_f", "frozen_base", 1)
    if "ece" not in m["post"]["student"]:
        assert "### Calibration" not in md
        return
    rows = md_rows(section(md, "Calibration (post-training student)"))
    ece = statistics.fmean(real_metrics(sweep, "combined_f", "frozen_base", s)["post"]["student"]["ece"]
                           for s in SEEDS)
    conf = statistics.fmean(real_metrics(sweep, "combined_f", "frozen_base", s)["post"]["student"]["mean_confidence"]
                            for s in SEEDS)
    assert rows["combined_f"][0] == f"ECE {ece:.4f} / conf {conf:.4f} (n=2)"
    assert "### post_student_ece" not in md  # calibration entries get their own table, not one each


def test_latex_has_the_shared_baseline(collected: collect.Summary, sweep: Path) -> None:
    tex = (sweep / "results.tex").read_text(encoding="utf-8")
    first = tex.split(r"\end{table}")[0]
    assert r"post\_student\_mcc" in first
    line = next(ln for ln in first.splitlines() if ln.startswith("CE (shared baseline) &"))
    assert line.endswith(r"& (shared) \\")


def test_skipped_runs_listed_with_reasons(collected: collect.Summary, sweep: Path) -> None:
    rows = {r["run_dir"]: r for r in read_csv(sweep / "skipped.csv")}
    assert set(rows) == set(BAD) | {job_name("combined_ce", "cotrain_base", s) for s in SEEDS}
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
    assert "0.987654" not in (sweep / "results.csv").read_text()  # the corrupt run never reached a mean


def test_byte_identical_on_rerun(collected: collect.Summary, sweep: Path) -> None:
    first = {f.name: f.read_bytes() for f in collected.files}
    again = collect.collect([str(sweep)])
    assert [f.name for f in again.files] == list(first)
    assert {"results.csv", "results.md", "results.tex", "paired.csv", "anova.csv"} <= set(first)
    assert any(name.endswith(".png") for name in first)
    for f in again.files:
        assert f.read_bytes() == first[f.name], f"{f.name} differs between two runs"


def test_plain_python_aggregation_matches_pandas(sweep: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    collect.collect([str(sweep)], out=str(tmp_path / "pd"), plots=False)
    monkeypatch.setattr(collect_tables, "_pd", None)
    collect.collect([str(sweep)], out=str(tmp_path / "py"), plots=False)
    for name in ("results.md", "results.tex", "results.csv"):
        assert (tmp_path / "pd" / name).read_text() == (tmp_path / "py" / name).read_text()


def test_duplicates_across_resubmitted_sweeps(real_sweep: Path, tmp_path: Path) -> None:
    src = real_sweep / job_name("combined_f", "frozen_base", 1)
    old, new = tmp_path / "sweep1", tmp_path / "sweep2"
    for d, end in ((old / "0", "2026-11-26T01:00:00+00:00"), (new / "0", "2026-11-26T05:00:00+00:00")):
        derive(src, d, 1)
        meta = read_json(d / "run_metadata.json")
        meta["end_time"] = end
        (d / "run_metadata.json").write_text(json.dumps(meta))
    derive(src, old / "1", 2, "failed", metrics=False, error="RuntimeError: boom")
    derive(src, new / "1", 2)
    s = collect.collect([str(tmp_path / "sweep*")], out=str(tmp_path / "out"), plots=False)
    assert sorted(r.run_dir for r in s.runs) == ["../sweep2/0", "../sweep2/1"]
    assert {(k.run_dir, k.status) for k in s.skipped} == {("../sweep1/0", "duplicate"), ("../sweep1/1", "failed")}


def test_a_swept_override_beyond_the_cells_splits_the_tables(real_sweep: Path, tmp_path: Path) -> None:
    """class_ratio swept next to the seeds: two experiments, never one cell with their seeds pooled. A seed that ran
    with another thread count is the same experiment (no variant of its own)."""
    src = real_sweep / job_name("combined_f", "frozen_base", 1)
    for name, seed, extra in (("a", 1, ["task.class_ratio=null"]), ("b", 1, ["task.class_ratio=[0.9,0.1]"]),
                              ("c", 2, ["task.class_ratio=null", "train.num_threads=1"])):
        job = derive(src, tmp_path / name, seed)
        meta = read_json(job / "run_metadata.json")
        meta["overrides"] += extra
        (job / "run_metadata.json").write_text(json.dumps(meta))
    mcc = read_json(src / "metrics.json")["post"]["student"]["mcc"]
    s = collect.collect([str(tmp_path)], plots=False)
    models = sorted({t.model for t in s.tables})
    assert models == [f"{s.runs[0].model.split(' · ')[0]} · task.class_ratio={r}" for r in ("[0.9,0.1]", "null")]
    cells = {t.model.rsplit("=", 1)[1]: c for t in s.tables if t.metric == "post_student_mcc" for c in t.cells.values()}
    assert {r: c.n for r, c in cells.items()} == {"[0.9,0.1]": 1, "null": 2}
    assert all(c.mean == pytest.approx(mcc) for c in cells.values())
    md = (tmp_path / "results.md").read_text()
    assert "Variants:" in md and "## cola / " in md and "task.class_ratio=[0.9,0.1]" in md


def test_metric_option_and_nested_job_dirs(real_sweep: Path, tmp_path: Path) -> None:
    derive(real_sweep / job_name("combined_f", "frozen_base", 1), tmp_path / "task=a" / "b", 1)  # '/' nests dirs
    derive(real_sweep / job_name("combined_ce", "frozen_base", 1), tmp_path / "task=a", 1)
    s = collect.collect([str(tmp_path)], metric="accuracy", plots=False)
    assert [t.metric for t in s.tables] == ["post_student_accuracy"]
    assert sorted(r.run_dir for r in s.runs) == ["task=a", "task=a/b"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "farlab.collect", *args], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    res = run_cli(str(sweep), "--out", str(out), "--no-plots")
    assert res.returncode == 0, res.stderr
    assert "CE (shared baseline)" in res.stdout and "[corrupt]" in res.stdout
    assert "6 runs used, 10 skipped (2 CE copies merged)" in res.stdout
    assert (out / "results.csv").read_text() == read_csv_text_relocated(sweep, out)
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli(str(empty))
    assert res.returncode == 2 and "no job dir" in res.stderr
    res = run_cli(str(tmp_path / "does-not-exist"))
    assert res.returncode == 2 and "no such directory" in res.stderr
    only_failed = tmp_path / "failed"
    derive(sweep / job_name("combined_f", "frozen_base", 1), only_failed / "0", 1, "failed", metrics=False,
           error="RuntimeError: CUDA out of memory")
    res = run_cli(str(only_failed), "--no-plots")
    assert res.returncode == 1 and "no completed run" in res.stderr and "CUDA out of memory" in res.stdout


def cli_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI's ``main`` in this process (argparse exits with SystemExit): the entry point itself runs as a real
    command in test_cli and in test_entry_points."""
    from farlab.collect.cli import main

    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli_in_process(capsys, "--help")
    assert code == 0 and err == ""
    assert out.startswith("usage: python -m farlab.collect")
    for text in ("--archive SWEEP DEST", "--metric", "--no-plots", "examples:",
                 "python -m farlab.collect multirun/2026-11-26/02-40-00"):
        assert text in out, text
    code, _, err = cli_in_process(capsys)
    assert code == 2 and "give at least one DIR" in err
    code, _, err = cli_in_process(capsys, "--archive", "a", "b", "--metric", "mcc")
    assert code == 2 and "takes no other DIR" in err


def read_csv_text_relocated(sweep: Path, out: Path) -> str:
    """results.csv of the sweep with run_dir paths re-expressed relative to `out` (same content otherwise)."""
    prefix = Path(os.path.relpath(sweep, out)).as_posix() + "/"
    lines = (sweep / "results.csv").read_text().splitlines(keepends=True)
    rows = [lines[0]] + [(prefix + ln) if not ln.startswith('"') else '"' + prefix + ln[1:] for ln in lines[1:]]
    return "".join(rows)


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


def test_flags_of_the_real_runs(collected: collect.Summary) -> None:
    """config.yaml as the trainer wrote it gives the cell its name promises."""
    for run in collected.runs:
        assert run.flags == flags_from_name(run.loss), run.run_dir


@pytest.mark.parametrize("path", sorted((REPO / "conf" / "loss").glob("*.yaml")), ids=lambda p: p.stem)
def test_flags_of_the_shipped_loss_configs(path: Path) -> None:
    """conf/loss/*.yaml as Hydra composes it into a run's config.yaml: the components agree with the naming
    convention wherever the name implies flags."""
    cfg = composed_loss(path.stem)
    assert cfg["name"] == path.stem
    by_name = flags_from_name(cfg["name"])
    if None not in by_name.values() and not cfg["name"].startswith("staged_"):
        assert far_flags(cfg["name"], cfg) == by_name
