"""The collector's statistics on SYNTHETIC sweeps with known effects. Each job dir is a real tiny run's dir
(collect_sweep.real_sweep) with its primary metric set by a formula, so the files follow the real schema while the
truth is known. Expected numbers are computed here by hand (balanced-design sums of squares, t quantiles)."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from farlab import collect
from farlab.collect.plots import effects
from farlab.collect.stats import t_interval
from farlab.eval.transfer import min_teacher_advantage
from tests.unit.collect_sweep import job_name, real_sweep, synthetic_sweep

__all__ = ["real_sweep"]  # the session fixture, imported so pytest finds it here

LOSSES = ("combined_ce", "combined_f", "combined_a", "combined_r",
          "combined_fa", "combined_fr", "combined_ar", "combined_far")
STRATEGIES = ("frozen_sft", "cotrain_base")
SEEDS = (1, 2, 3)
SEED_SHIFT = {1: 0.0, 2: 0.01, 3: -0.01}
T_975_DF2 = 4.302652729911275  # t quantile 0.975 with 2 degrees of freedom (tables)
NOISE = dict(zip(itertools.product(LOSSES, STRATEGIES, SEEDS),
                 np.random.default_rng(7).normal(0.0, 0.005, len(LOSSES) * len(STRATEGIES) * len(SEEDS))))


def letters(loss: str) -> str:
    return loss.removeprefix("combined_").replace("ce", "")


def value(loss: str, strategy: str, seed: int) -> float:
    """Known truth: F adds +0.10, R +0.03, A nothing; cotrain_base +0.02 for distilled cells; the CE baseline is
    the same run under every strategy (no teacher), so its copies carry the same value."""
    far = letters(loss)
    if not far:
        return 0.20 + SEED_SHIFT[seed] + NOISE[(loss, "frozen_sft", seed)]
    return (0.20 + 0.10 * ("f" in far) + 0.03 * ("r" in far) + 0.02 * (strategy == "cotrain_base")
            + SEED_SHIFT[seed] + NOISE[(loss, strategy, seed)])


@pytest.fixture(scope="module")
def template(real_sweep: Path) -> Path:
    return real_sweep / job_name("combined_f", "frozen_base", 1)


@pytest.fixture(scope="module")
def factorial(template: Path, tmp_path_factory: pytest.TempPathFactory) -> collect.Summary:
    root = synthetic_sweep(tmp_path_factory.mktemp("factorial") / "sweep", template, value, losses=LOSSES,
                           strategies=STRATEGIES, seeds=SEEDS)
    return collect.collect([str(root)], plots=False)


def anova_row(summary: collect.Summary, term: str):
    return next(r for r in summary.groups[0].anova.rows if r.term == term)


def test_ce_baseline_appears_once(factorial: collect.Summary) -> None:
    t = factorial.tables[0]
    assert t.strategies == list(STRATEGIES)
    assert [k for k in t.cells if k[0] == "combined_ce"] == [("combined_ce", "shared")]
    assert t.cells[("combined_ce", "shared")].n == len(SEEDS)
    merged = sorted(s.run_dir for s in factorial.skipped if s.status == "merged")
    assert merged == [job_name("combined_ce", "cotrain_base", s) for s in SEEDS]
    assert all("post_student_mcc same" in s.reason for s in factorial.skipped)
    md = (factorial.out_dir / "results.md").read_text(encoding="utf-8")
    per_cell = md.count("### ") - md.count("### Paired") - md.count("### ANOVA") - md.count("### Teachers")
    assert md.count("| CE (shared baseline) |") == per_cell
    assert "3 of them are copies of the CE baseline" in md


def test_anova_finds_the_f_effect_and_not_the_null_one(factorial: collect.Summary) -> None:
    a = factorial.groups[0].anova
    assert a.formula == "post_student_mcc ~ (F + A + R) ** 2 * strategy"
    assert a.n_runs == 7 * len(STRATEGIES) * len(SEEDS)  # the CE baseline is not in the model (no strategy)
    assert a.df_resid == a.n_runs - 7 * len(STRATEGIES)
    assert any("CE baseline is not in this model" in n for n in a.notes)
    f, a_, r, strat = (anova_row(factorial, t) for t in ("F", "A", "R", "strategy"))
    assert f.p_value < 1e-10 and f.partial_eta_sq > 0.95 and f.estimate == pytest.approx(0.10, abs=0.005)
    assert r.p_value < 1e-3 and r.estimate == pytest.approx(0.03, abs=0.005)
    assert strat.p_value < 1e-3
    assert a_.p_value > 0.05 and abs(a_.estimate) < 0.005  # no A effect in the truth
    md = (factorial.out_dir / "results.md").read_text(encoding="utf-8")
    f_line = next(ln for ln in md.splitlines() if ln.startswith("| F | 1 |"))
    assert f_line.endswith(f"| <0.0001 | {f.partial_eta_sq:.3f} | {f.estimate:+.4f} |")


def test_paired_differences_and_intervals(factorial: collect.Summary) -> None:
    by = {(p.loss, p.strategy): p for p in factorial.groups[0].paired}
    assert len(by) == 7 * len(STRATEGIES)
    # hand-computed interval of one cell: mean ± t(0.975, 2) * s / sqrt(3)
    diffs = [value("combined_fr", "frozen_sft", s) - value("combined_ce", "frozen_sft", s) for s in SEEDS]
    mean, half = statistics.fmean(diffs), T_975_DF2 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    p = by[("combined_fr", "frozen_sft")]
    assert (p.n, p.mean, p.low, p.high) == (3, pytest.approx(mean), pytest.approx(mean - half),
                                            pytest.approx(mean + half))
    assert p.excludes_zero and p.verdict("post_student_mcc") == "better"
    # a null effect: combined_a under frozen_sft has the CE baseline's truth; its interval contains zero
    null = by[("combined_a", "frozen_sft")]
    assert null.low < 0 < null.high and not null.excludes_zero and null.verdict("post_student_mcc") == ""
    md = (factorial.out_dir / "results.md").read_text(encoding="utf-8")
    row = next(ln for ln in md.split("### Paired differences")[1].splitlines() if ln.startswith("| combined_fr |"))
    assert row.split("|")[2].strip() == f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}] (n=3) **better**"
    assert "- **Seeds per cell**: n = seeds the cell shares with the CE baseline: 3 (every cell)" in md


def test_t_interval_edge_cases() -> None:
    assert t_interval([0.1]) == (None, None)
    assert t_interval([0.1, 0.1]) == (pytest.approx(0.1), pytest.approx(0.1))
    low, high = t_interval([0.0, 0.2])  # mean 0.1, s = 0.1414, t(0.975, 1) = 12.706
    assert (low, high) == (pytest.approx(0.1 - 12.7062047 * 0.1), pytest.approx(0.1 + 12.7062047 * 0.1))


def test_balanced_factorial_against_hand_computed_anova(template: Path, tmp_path: Path) -> None:
    """One strategy, the CE baseline in the model (full 2^3 design, 2 seeds): type II sums of squares of a
    balanced design are N * (half effect)^2, and F, p, partial eta^2 follow from them."""
    def val(loss: str, strategy: str, seed: int) -> float:
        far = letters(loss)
        return 0.2 + 0.1 * ("f" in far) + 0.05 * ("f" in far and "a" in far) + NOISE[(loss, "frozen_sft", seed)]

    seeds = (1, 2)
    root = synthetic_sweep(tmp_path / "sweep", template, val, losses=LOSSES, strategies=("frozen_sft",), seeds=seeds)
    a = collect.collect([str(root)], plots=False).groups[0].anova
    assert a.formula == "post_student_mcc ~ F * A * R" and a.n_runs == 16 and a.df_resid == 8 and not a.notes
    runs = [(far, val(loss, "frozen_sft", s)) for loss in LOSSES for s in seeds for far in [letters(loss)]]
    n = len(runs)
    cell_means = {loss: statistics.fmean(val(loss, "frozen_sft", s) for s in seeds) for loss in LOSSES}
    ss_resid = sum((val(loss, "frozen_sft", s) - cell_means[loss]) ** 2 for loss in LOSSES for s in seeds)

    def sign(far: str, factor: str) -> int:
        return 1 if factor in far else -1

    rows = {r.term: r for r in a.rows}
    for term in ("F", "A", "R", "F:A", "A:R", "F:A:R"):
        half = sum(y * math.prod(sign(far, f.lower()) for f in term.split(":")) for far, y in runs) / n
        ss = n * half**2
        f_stat = ss / (ss_resid / 8)
        r = rows[term]
        assert r.sum_sq == pytest.approx(ss, rel=1e-6, abs=1e-12), term
        assert r.f_value == pytest.approx(f_stat, rel=1e-6), term
        assert r.p_value == pytest.approx(sps.f.sf(f_stat, 1, 8), rel=1e-5, abs=1e-12), term
        assert r.partial_eta_sq == pytest.approx(ss / (ss + ss_resid), rel=1e-6), term
    assert rows["Residual"].sum_sq == pytest.approx(ss_resid)
    # main effect estimate (additive model) = mean with F on - mean with F off, in a balanced design
    on = statistics.fmean(y for far, y in runs if "f" in far)
    off = statistics.fmean(y for far, y in runs if "f" not in far)
    assert rows["F"].estimate == pytest.approx(on - off)
    assert rows["F"].p_value < 1e-4


def test_one_seed_drops_interactions_it_cannot_estimate(template: Path, tmp_path: Path) -> None:
    root = synthetic_sweep(tmp_path / "sweep", template, value, losses=LOSSES, strategies=STRATEGIES, seeds=(1,))
    a = collect.collect([str(root)], plots=False).groups[0].anova
    assert a.formula == "post_student_mcc ~ (F + A + R) ** 2 + strategy"  # saturated per strategy: 0 residual df
    assert any("higher-order terms dropped" in n for n in a.notes)
    only_ce = synthetic_sweep(tmp_path / "ce", template, value, losses=("combined_ce",), strategies=STRATEGIES,
                              seeds=SEEDS)
    s = collect.collect([str(only_ce)], plots=False)
    assert s.groups[0].anova.startswith("nothing varies") and s.groups[0].paired == ()
    assert "No CE baseline run shares a seed" in (only_ce / "results.md").read_text(encoding="utf-8")


def test_degenerate_cells_and_calibration(template: Path, tmp_path: Path) -> None:
    """MCC exactly 0 or one class >= 99% of the predictions marks a cell †; ECE / confidence shown when present."""
    def val(loss: str, strategy: str, seed: int) -> float:
        return 0.0 if loss == "combined_a" else value(loss, strategy, seed)

    def edit(loss: str, strategy: str, seed: int, m: dict) -> None:
        student = m["post"]["student"]
        student.update(ece=0.01 * seed, mean_confidence=0.7 + 0.01 * seed)
        student["pred_class_rate"] = ({"unacceptable": 0.995, "acceptable": 0.005} if loss == "combined_r"
                                      else {"unacceptable": 0.6, "acceptable": 0.4})

    root = synthetic_sweep(tmp_path / "sweep", template, val, losses=("combined_ce", "combined_a", "combined_r"),
                           strategies=("frozen_sft",), seeds=(1, 2), edit=edit)
    s = collect.collect([str(root)], plots=False)
    t = s.tables[0]
    assert t.degenerate == {("combined_a", "frozen_sft"): (2, 2), ("combined_r", "frozen_sft"): (2, 2)}
    md = (root / "results.md").read_text(encoding="utf-8")
    assert "combined_a/frozen_sft (2/2 runs), combined_r/frozen_sft (2/2 runs)" in md
    assert "| combined_a | -A- | 0.0000 ± 0.0000 (n=2) † |" in md
    assert "| combined_r | ECE 0.0150 / conf 0.7150 (n=2) |" in md

    def strip(loss: str, strategy: str, seed: int, m: dict) -> None:
        for key in ("ece", "mean_confidence", "nll", "brier", "mean_entropy", "per_class_recall", "pred_class_rate"):
            m["post"]["student"].pop(key, None)

    bare = synthetic_sweep(tmp_path / "bare", template, value, losses=("combined_ce", "combined_f"),
                           strategies=("frozen_sft",), seeds=(1, 2), edit=strip)
    collect.collect([str(bare)], plots=False)
    assert "Calibration" not in (bare / "results.md").read_text(encoding="utf-8")


def test_cross_task_ranks_and_normalised_score(template: Path, tmp_path: Path) -> None:
    losses = ("combined_ce", "combined_f", "combined_a", "combined_r")

    def sst2(loss: str, strategy: str, seed: int) -> float:  # another order: A best, F worst
        return {"ce": 0.80, "f": 0.78, "a": 0.84, "r": 0.82}[letters(loss) or "ce"] + SEED_SHIFT[seed] / 10

    # CoLA has a second strategy that SST-2 lacks (as in the study): its cells, the best on CoLA, are not ranked.
    cola = synthetic_sweep(tmp_path / "cola", template, value, losses=losses, strategies=("frozen_sft", "cotrain_base"),
                           seeds=SEEDS, teacher=0.5)
    other = synthetic_sweep(tmp_path / "sst2", template, sst2, task="sst2", losses=losses,
                            strategies=("frozen_sft",), seeds=SEEDS, teacher=0.83)  # gap 0.03 < threshold
    s = collect.collect([str(cola), str(other)], out=str(tmp_path / "out"), plots=False)
    ct = s.cross
    assert [t.label for t in ct.tasks] == ["cola/tiny_bert", "sst2/tiny_bert"]
    cola_t, sst2_t = ct.tasks
    means = {loss: statistics.fmean(value(loss, "frozen_sft", sd) for sd in SEEDS) for loss in losses}
    ranked = sorted(losses, key=lambda loss: -means[loss])  # 1 = best
    keys = {loss: (loss, "shared" if loss == "combined_ce" else "frozen_sft") for loss in losses}
    assert {loss: cola_t.ranks[keys[loss]] for loss in losses} == {loss: ranked.index(loss) + 1.0 for loss in losses}
    assert {loss: sst2_t.ranks[keys[loss]] for loss in losses} == {"combined_a": 1.0, "combined_r": 2.0,
                                                                  "combined_ce": 3.0, "combined_f": 4.0}
    for loss in losses[1:]:
        want = (means[loss] - means["combined_ce"]) / (0.5 - means["combined_ce"])
        assert cola_t.normalised[keys[loss]] == pytest.approx(want)
        assert sst2_t.normalised[keys[loss]] is None  # 0.83 - 0.80 < 5% of accuracy's range
        assert ct.mean_rank[keys[loss]] == pytest.approx((cola_t.ranks[keys[loss]] + sst2_t.ranks[keys[loss]]) / 2)
    for loss in losses[1:]:  # a CoLA-only cell: its mean and score, no rank (it would outrank every common cell)
        only = (loss, "cotrain_base")
        assert cola_t.means[only] > cola_t.means[keys[loss]] and only not in cola_t.ranks and only not in ct.mean_rank
    assert set(ct.mean_rank) == set(keys.values())
    assert 0.83 - 0.80 < min_teacher_advantage("accuracy") == 0.05 < 0.5 - means["combined_ce"]
    md = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert "## Cross-task summary" in md and "teacher - CE < 5% of the metric's range" in md
    assert "its rank among the 4 cells every task has" in md
    assert "| combined_f / cotrain_base | " in md and md.count("- (not in every task) |") == 3
    assert (tmp_path / "out" / "cross_task.csv").is_file()


def test_main_effects_of_the_plot(factorial: collect.Summary) -> None:
    from farlab.collect.tables import run_row

    rows = [run_row(r) for r in factorial.runs]
    eff = effects(rows, "post_student_mcc")
    kept = [(loss, st, sd) for loss in LOSSES for st in STRATEGIES for sd in SEEDS
            if loss != "combined_ce" or st == "frozen_sft"]  # one CE copy per seed
    off = statistics.fmean(value(*k) for k in kept if "f" not in letters(k[0]))
    on = statistics.fmean(value(*k) for k in kept if "f" in letters(k[0]))
    assert eff["main"]["F"] == [pytest.approx(off), pytest.approx(on)]


def test_extra_eval_splits_are_collected(template: Path, tmp_path: Path) -> None:
    """metrics.json's extra_eval (task.extra_eval_files, e.g. MNLI dev_mismatched): columns and a primary table."""
    def edit(loss: str, strategy: str, seed: int, m: dict) -> None:
        m["extra_eval"] = {"dev_mismatched": {"pre": {"student": {"mcc": 0.0}},
                                              "post": {"student": {"mcc": value(loss, strategy, seed) / 2,
                                                                   "pred_class_rate": {"a": 0.3, "b": 0.7}}}}}

    root = synthetic_sweep(tmp_path / "sweep", template, value, losses=("combined_ce", "combined_f"),
                           strategies=("frozen_sft",), seeds=(1, 2), edit=edit)
    s = collect.collect([str(root)], plots=False)
    f_runs = [r for r in s.runs if r.loss == "combined_f"]
    assert {r.metrics["extra_dev_mismatched_post_student_mcc"] for r in f_runs} == {
        value("combined_f", "frozen_sft", sd) / 2 for sd in (1, 2)}
    assert f_runs[0].metrics["extra_dev_mismatched_post_student_max_class_rate"] == 0.7
    md = (root / "results.md").read_text(encoding="utf-8")
    block = md.split("### extra_dev_mismatched_post_student_mcc\n", 1)[1].split("\n### ", 1)[0]
    assert "on the extra eval split `dev_mismatched`" in block
    want = statistics.fmean(value("combined_f", "frozen_sft", sd) / 2 for sd in (1, 2))
    assert f"| combined_f | F-- | **{want:.4f} ± " in block


def test_collector_applies_the_advantage_floor_to_runs_written_before_it(template: Path, tmp_path: Path) -> None:
    """A metrics.json from before the floor stores efficiency 0.18 / 0.02 = 9 for an untuned teacher; the collector
    leaves it out with the reason, and keeps a run whose teacher is well ahead (0.1 / 0.25 = 0.4)."""
    def stored(advantage: float, gain: float) -> Callable[[str, str, int, dict], None]:
        def edit(loss: str, strategy: str, seed: int, m: dict) -> None:  # the old rule: any positive advantage
            m["transfer_gap"] = {"metric": "mcc", "teacher_advantage": advantage, "student_gain": gain,
                                 "transfer_efficiency": gain / advantage, "transfer_efficiency_note": None}
        return edit

    root = tmp_path / "sweep"
    for strategy, advantage, gain in (("cotrain_base", 0.02, 0.18), ("frozen_sft", 0.25, 0.1)):
        synthetic_sweep(root, template, value, losses=("combined_r",), strategies=(strategy,), seeds=(1,),
                        edit=stored(advantage, gain))
    from farlab.collect.tables import run_row

    rows = {r["teacher_strategy"]: r for r in map(run_row, collect.collect([str(root)], plots=False).runs)}
    assert rows["cotrain_base"]["transfer_efficiency"] is None
    assert "0.0200 < 0.05 (5% of the metric's range)" in rows["cotrain_base"]["transfer_efficiency_note"]
    assert rows["frozen_sft"]["transfer_efficiency"] == pytest.approx(0.4)


def test_teachers_table_counts_each_seeds_teacher_once(template: Path, tmp_path: Path) -> None:
    """Start: one teacher per (strategy, seed), however many cells learned from it; end: co-trained runs only."""
    start = {("frozen_sft", 1): 0.40, ("frozen_sft", 2): 0.30, ("cotrain_base", 1): 0.02, ("cotrain_base", 2): 0.04}
    end = {("combined_r", 1): 0.31, ("combined_r", 2): 0.33, ("combined_f", 1): 0.29, ("combined_f", 2): 0.27}

    def teachers(loss: str, strategy: str, seed: int, m: dict) -> None:
        if loss == "combined_ce":
            return
        m["pre"]["teacher"]["mcc"] = start[(strategy, seed)]
        if strategy == "cotrain_base":
            m["post"]["teacher"] = {**m["post"]["student"], "mcc": end[(loss, seed)]}

    root = synthetic_sweep(tmp_path / "sweep", template, lambda *_: 0.2, losses=("combined_ce", "combined_r",
                           "combined_f"), strategies=("frozen_sft", "cotrain_base"), seeds=(1, 2), edit=teachers)
    md = (collect.collect([str(root)], plots=False).out_dir / "results.md").read_text(encoding="utf-8")
    table = md.split("### Teachers")[1]
    sd = statistics.stdev
    assert f"| frozen_sft | 0.3500 ± {sd([0.40, 0.30]):.4f} (n=2 seeds) | - |" in table  # 2 seeds, not 4 runs
    assert (f"| cotrain_base | 0.0300 ± {sd([0.02, 0.04]):.4f} (n=2 seeds) | "
            f"0.3000 ± {sd(end.values()):.4f} (n=4 runs) |") in table
    assert "- **Seeds per cell**: 2 (every cell)" in table
