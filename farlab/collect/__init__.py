"""The results collector: a sweep's run dirs -> tables, FAR statistics, plots and weight-free archives.

``python -m farlab.collect DIR`` runs it (docs/collect.md); :func:`collect` does the same from Python and
:func:`archive_sweep` is ``--archive``. Modules: runs (read job dirs), factors (F/A/R cells, the shared CE baseline),
tables (aggregate, Markdown/LaTeX), stats (ANOVA, paired intervals, cross-task), report (results.md and the
statistics CSVs), plots, archive, pipeline (one collection), cli.
"""

from farlab.collect.archive import archive_sweep
from farlab.collect.pipeline import Summary, collect
from farlab.collect.runs import CollectError, Run, Skipped

__all__ = ["CollectError", "Run", "Skipped", "Summary", "archive_sweep", "collect"]
