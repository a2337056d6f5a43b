"""The results collector: a sweep's run dirs -> tables, statistics, plots and archives (docs/collect.md).

``python -m farlab.collect DIR`` runs it; :func:`collect` is the same from Python.
"""

from farlab.collect.cli import Summary, collect
from farlab.collect.runs import CollectError, Run, Skipped

__all__ = ["CollectError", "Run", "Skipped", "Summary", "collect"]
