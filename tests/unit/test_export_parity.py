"""The parity verdict's metric comparison: exact for label and text metrics, a relative tolerance for the
likelihood metrics (continuous in logits that differ between runtimes in the last bits)."""

from __future__ import annotations

from farlab.export.parity import LIKELIHOOD_RTOL, _metrics_agree


def test_text_metrics_must_be_equal_and_perplexity_within_its_tolerance():
    ours = {"bleu": 12.5, "chrf": 40.0, "perplexity": 1000.0}
    assert _metrics_agree(ours, dict(ours))
    assert _metrics_agree(ours, {**ours, "perplexity": 1000.0 * (1 + LIKELIHOOD_RTOL / 2)})
    assert not _metrics_agree(ours, {**ours, "perplexity": 1000.0 * (1 + 2 * LIKELIHOOD_RTOL)})
    assert not _metrics_agree(ours, {**ours, "bleu": 12.5 + 1e-12})  # one changed generation changes BLEU
    assert not _metrics_agree(ours, {"bleu": 12.5, "chrf": 40.0})  # a metric missing on one side
