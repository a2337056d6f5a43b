"""farlab's Hydra sweeper (``hydra/sweeper=farlab``): Hydra's basic sweeper minus jobs that repeat an earlier one.

Hydra finds it through the ``hydra_plugins`` namespace package (installed with farlab, see pyproject.toml).
"""


def register() -> None:
    """Make the sweeper known to Hydra without relying on its plugin scan (idempotent).

    Hydra finds plugins by listing the ``hydra_plugins`` namespace package, which a PEP 660 editable install
    (``pip install -e .``, what ``make setup`` does) hides from the listing unless Python starts in the repo root
    (hydra issue #2359). farlab.config.register_configs() calls this, so ``hydra/sweeper=farlab`` works however
    farlab is installed and wherever it is launched from.
    """
    from hydra.core.plugins import Plugins

    # Scan first: the scan re-executes plugin modules that are already imported (BasicSweeper among them), and a
    # FarlabSweeper built on the class from before the re-execution would fail BasicSweeper's super() call.
    plugins = Plugins.instance()
    from hydra_plugins.farlab_sweeper.farlab_sweeper import FarlabSweeper

    plugins.register(FarlabSweeper)
