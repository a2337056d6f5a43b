"""The FAR study's statistics over one (task, model) group of tidy rows, and a cross-task summary.

* :func:`far_anova`: OLS of a metric on F, A, R (0/1), the teacher strategy and their interactions, with a
  type II ANOVA table and partial eta squared (statsmodels). Seeds are the replicates.
* :func:`paired_vs_baseline`: each cell minus the CE baseline at the same seed, mean and 95% t-interval (scipy).
* :func:`cross_task`: mean rank of each cell per task and overall, and the normalised score
  (cell - CE) / (teacher - CE) where the teacher is meaningfully ahead of the CE student.

Rows are the dicts of :func:`farlab.collect.tables.run_row` (F/A/R, cell_strategy 'shared' for the CE baseline).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.formula.api import ols
from statsmodels.stats.anova import anova_lm

from farlab.collect.factors import FACTORS, LOSS_ORDER, SHARED, STRATEGY_ORDER
from farlab.collect.tables import finite
from farlab.eval.metrics import lower_is_better
from farlab.eval.transfer import min_teacher_advantage

CONFIDENCE = 0.95
STRATEGY_TERM = "C(strategy)"


# ---------------------------------------------------------------------------------------------- ANOVA


@dataclass(frozen=True)
class AnovaRow:
    """One term of the type II ANOVA. estimate: the term's OLS coefficient in the model of its own order (main
    effects: additive model; two-way: main + two-way), i.e. the metric's change when the factor(s) are on;
    None for strategy terms (several levels) and the residual."""

    term: str
    df: float
    sum_sq: float
    f_value: float | None
    p_value: float | None
    partial_eta_sq: float | None
    estimate: float | None


@dataclass(frozen=True)
class Anova:
    """The fitted model: formula, runs used, residual df, the table, and what was left out and why."""

    metric: str
    formula: str
    n_runs: int
    df_resid: float
    rows: tuple[AnovaRow, ...]
    notes: tuple[str, ...]


def model_frame(rows: list[dict[str, Any]], metric: str) -> pd.DataFrame:
    """y, F, A, R, strategy, baseline per run with a finite metric and known F/A/R, in row order."""
    use = [r for r in rows if finite(r.get(metric)) and all(r.get(f) in (0, 1) for f in FACTORS)]
    return pd.DataFrame({"y": [float(r[metric]) for r in use],
                         **{f: [int(r[f]) for r in use] for f in FACTORS},
                         "strategy": [str(r["cell_strategy"]) for r in use],
                         "baseline": [r["cell_strategy"] == SHARED for r in use]})


def _candidates(factors: list[str], multi: bool, with_baseline: bool) -> list[str]:
    """Formulas from the richest to the plainest (the first one that is estimable is used)."""
    main = " + ".join(factors)
    full = " * ".join(factors)
    forms = []
    if factors:
        two = f"({main}) ** 2" if len(factors) > 1 else main
        far = [full if with_baseline else two, two, main]
        if multi:
            forms = [f"{far[0]} * {STRATEGY_TERM}", f"{far[1]} * {STRATEGY_TERM}",
                     f"{far[1]} + {STRATEGY_TERM}", f"{main} + {STRATEGY_TERM}"]
        else:
            forms = far
    elif multi:
        forms = [STRATEGY_TERM]
    return list(dict.fromkeys(forms))


def _fit(formula: str, frame: pd.DataFrame) -> Any | None:
    """OLS fit, or None when the design is rank-deficient or leaves no residual degrees of freedom."""
    model = ols(f"y ~ {formula}", frame)
    if np.linalg.matrix_rank(model.exog) < model.exog.shape[1] or model.exog.shape[0] <= model.exog.shape[1]:
        return None
    return model.fit()


def _term_order(term: str) -> tuple:
    """F, A, R, strategy, F:A, F:R, A:R, F:strategy, ..., F:A:R, ..."""
    parts = term.split(":")
    return (len(parts), STRATEGY_TERM in parts, [FACTORS.index(p) if p in FACTORS else 9 for p in parts])


def term_label(term: str) -> str:
    """'F:C(strategy)' -> 'F:strategy'."""
    return term.replace(STRATEGY_TERM, "strategy")


def far_anova(rows: list[dict[str, Any]], metric: str) -> Anova | str:
    """The factorial model of ``metric`` (see the module docstring), or the reason it cannot be fitted.

    With several teacher strategies the CE baseline is left out of the model (it has no teacher, hence no
    strategy), so the three-way F:A:R term is not estimable; the paired comparisons use the baseline instead.
    Factors that do not vary are left out; when the richest formula is rank-deficient or leaves no residual
    degrees of freedom (one seed per cell), interactions are dropped until it fits, and the notes say so.
    """
    frame = model_frame(rows, metric)
    notes: list[str] = []
    multi = frame.loc[~frame["baseline"], "strategy"].nunique() > 1
    if multi and frame["baseline"].any():
        frame = frame[~frame["baseline"]].reset_index(drop=True)
        notes.append("the CE baseline is not in this model (no teacher, so no strategy); "
                     "F:A:R is not estimable without it and is assumed zero")
    factors = [f for f in FACTORS if frame[f].nunique() == 2]
    if len(factors) < len(FACTORS):
        notes.append("left out (does not vary): " + ", ".join(f for f in FACTORS if f not in factors))
    forms = _candidates(factors, multi, bool(frame["baseline"].any()))
    if not forms:
        return "nothing varies (one F/A/R cell, one strategy)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = [(f, _fit(f, frame)) for f in forms]
        usable = [(f, m) for f, m in fitted if m is not None]
        if not usable:
            return (f"not estimable from {len(frame)} runs: every formula ({'; '.join(forms)}) is rank-deficient "
                    "or leaves no residual degrees of freedom (more seeds per cell needed)")
        formula, fit = usable[0]
        if formula != forms[0]:
            notes.append(f"{forms[0]} is not estimable from these runs (more seeds or cells needed); "
                         "higher-order terms dropped")
        table = anova_lm(fit, typ=2)
        estimates = _estimates(factors, multi, frame)
    ss_resid = float(table.loc["Residual", "sum_sq"])
    out = []
    for term in sorted((t for t in table.index if t != "Residual"), key=_term_order):
        ss = float(table.loc[term, "sum_sq"])
        f_val, p_val = float(table.loc[term, "F"]), float(table.loc[term, "PR(>F)"])
        eta = ss / (ss + ss_resid) if ss + ss_resid > 0 else None  # partial eta^2: not in statsmodels' table
        out.append(AnovaRow(term_label(term), float(table.loc[term, "df"]), ss, f_val if math.isfinite(f_val)
                            else None, p_val if math.isfinite(p_val) else None, eta, estimates.get(term)))
    out.append(AnovaRow("Residual", float(fit.df_resid), ss_resid, None, None, None, None))
    return Anova(metric, f"{metric} ~ {term_label(formula)}", len(frame), float(fit.df_resid), tuple(out),
                 tuple(notes))


def _estimates(factors: list[str], multi: bool, frame: pd.DataFrame) -> dict[str, float]:
    """Main-effect coefficients from the additive model, two-way ones from the main + two-way model."""
    extra = f" + {STRATEGY_TERM}" if multi else ""
    out: dict[str, float] = {}
    if not factors:
        return out
    for formula, order in ((" + ".join(factors), 1), (f"({' + '.join(factors)}) ** 2", 2)):
        fit = _fit(formula + extra, frame)
        if fit is None:
            continue
        for name, value in fit.params.items():
            parts = str(name).split(":")
            if len(parts) == order and all(p in factors for p in parts):
                out[str(name)] = float(value)
    return out


# ---------------------------------------------------------------------------------------------- paired


@dataclass(frozen=True)
class Paired:
    """A cell minus the CE baseline at the same seeds: n seeds, mean, CONFIDENCE t-interval (None when n < 2)."""

    loss: str
    strategy: str
    n: int
    mean: float
    low: float | None
    high: float | None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def verdict(self, metric: str) -> str:
        """'better' / 'worse' than CE when the interval excludes zero, else ''."""
        if not self.excludes_zero:
            return ""
        up = self.mean > 0
        return "better" if up != lower_is_better(metric) else "worse"


def t_interval(diffs: list[float], confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """mean ± t_{(1+c)/2, n-1} * s/sqrt(n) (scipy.stats.t); (None, None) for n < 2, a point for zero spread."""
    if len(diffs) < 2:
        return None, None
    mean, sem = float(np.mean(diffs)), float(sps.sem(diffs))
    if sem == 0:
        return mean, mean
    low, high = sps.t.interval(confidence, len(diffs) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def _per_seed(rows: list[dict[str, Any]], metric: str) -> dict[str, float]:
    """Mean of the metric per seed (str) over the given rows."""
    by: dict[str, list[float]] = {}
    for r in rows:
        if finite(r.get(metric)):
            by.setdefault(str(r["seed"]), []).append(float(r[metric]))
    return {s: float(np.mean(v)) for s, v in by.items()}


def baseline_loss(rows: list[dict[str, Any]]) -> str | None:
    """The CE baseline's loss name (combined_ce first when a sweep has several)."""
    names = {r["loss"] for r in rows if r.get("cell_strategy") == SHARED}
    return next((n for n in LOSS_ORDER if n in names), min(names) if names else None)


def paired_vs_baseline(rows: list[dict[str, Any]], metric: str) -> list[Paired]:
    """Paired differences of every distilled (loss, strategy) cell against the CE baseline, seed by seed."""
    base_name = baseline_loss(rows)
    if base_name is None:
        return []
    base = _per_seed([r for r in rows if r["loss"] == base_name and r["cell_strategy"] == SHARED], metric)
    cells = sorted({(r["loss"], r["cell_strategy"]) for r in rows if r["cell_strategy"] != SHARED},
                   key=lambda k: (_rank(k[0], LOSS_ORDER), _rank(k[1], STRATEGY_ORDER)))
    out = []
    for loss, strat in cells:
        own = _per_seed([r for r in rows if r["loss"] == loss and r["cell_strategy"] == strat], metric)
        seeds = sorted(set(own) & set(base))
        if not seeds:
            continue
        diffs = [own[s] - base[s] for s in seeds]
        low, high = t_interval(diffs)
        out.append(Paired(loss, strat, len(diffs), float(np.mean(diffs)), low, high))
    return out


def _rank(name: str, preferred: tuple[str, ...]) -> tuple:
    return (preferred.index(name), "") if name in preferred else (len(preferred), name)


# ---------------------------------------------------------------------------------------------- cross-task


@dataclass(frozen=True)
class TaskCells:
    """One (task, model) group in the cross-task summary."""

    label: str
    metric: str
    means: dict[tuple[str, str], float]  # (loss, cell_strategy) -> mean over seeds
    ranks: dict[tuple[str, str], float]  # among the cells every task has; 1 = best; ties share the average rank
    normalised: dict[tuple[str, str], float | None]  # None where teacher - CE < min_teacher_advantage or unknown


@dataclass(frozen=True)
class CrossTask:
    tasks: tuple[TaskCells, ...]
    cells: tuple[tuple[str, str], ...]
    mean_rank: dict[tuple[str, str], float]


def _teacher_score(row: dict[str, Any], primary: str) -> float | None:
    """The teacher the student learned from: post-training when co-trained, else before training."""
    for col in (f"post_teacher_{primary}", f"pre_teacher_{primary}"):
        if finite(row.get(col)):
            return float(row[col])
    return None


def task_cells(label: str, rows: list[dict[str, Any]], metric: str,
               ranked_cells: set[tuple[str, str]] | None = None) -> TaskCells:
    """Cell means, ranks and normalised scores of one (task, model) group for its primary metric column; ranks
    among ``ranked_cells`` only when given (the cells every task has)."""
    primary = metric.removeprefix("post_student_")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if finite(r.get(metric)):
            groups.setdefault((r["loss"], r["cell_strategy"]), []).append(r)
    means = {k: float(np.mean([r[metric] for r in v])) for k, v in groups.items()}
    keys = sorted(k for k in means if ranked_cells is None or k in ranked_cells)
    sign = 1.0 if lower_is_better(metric) else -1.0
    ranked = sps.rankdata([sign * means[k] for k in keys], method="average") if keys else []
    ranks = {k: float(r) for k, r in zip(keys, ranked)}
    base_name = baseline_loss(rows)
    ce = means.get((base_name, SHARED)) if base_name else None
    normalised: dict[tuple[str, str], float | None] = {}
    for k, runs in groups.items():
        teachers = [t for t in (_teacher_score(r, primary) for r in runs) if t is not None]
        if ce is None or k[1] == SHARED or not teachers:
            normalised[k] = None
            continue
        gap = float(np.mean(teachers)) - ce
        # a near-zero denominator (an untuned base teacher) blows the score up: the transfer efficiency's floor
        meaningful = (-sign) * gap >= min_teacher_advantage(primary)
        normalised[k] = (means[k] - ce) / gap if meaningful else None
    return TaskCells(label, metric, means, ranks, normalised)


def cross_task(groups: list[tuple[str, list[dict[str, Any]], str]]) -> CrossTask:
    """Cross-task summary of (label, rows, primary metric column) groups: per task each cell's mean, its rank
    among the cells every task has, and its normalised score; the mean rank of those common cells."""
    # Ranks compare only where every task has the cell: a rank among CoLA's 29 cells and one among SST-2's 15
    # are different scales, and their mean would favour cells that exist only in the smaller grid.
    cell_sets = [{k for r in rows if finite(r.get(metric)) for k in [(r["loss"], r["cell_strategy"])]}
                 for _, rows, metric in groups]
    common = set.intersection(*cell_sets) if cell_sets else set()
    tasks = tuple(task_cells(label, rows, metric, common) for label, rows, metric in groups)
    keys = set().union(*cell_sets)
    cells = tuple(sorted(keys, key=lambda k: (k[1] != SHARED, _rank(k[0], LOSS_ORDER), _rank(k[1], STRATEGY_ORDER))))
    mean_rank = {k: float(np.mean([t.ranks[k] for t in tasks])) for k in cells if k in common}
    return CrossTask(tasks, cells, mean_rank)
