"""``latency_p95_s``: the 95th percentile of the per-example answer latency, in seconds."""

from collections.abc import Sequence

from flywheel.evaluate.metrics.base import RunMetric
from flywheel.evaluate.stats import percentile


class LatencyP95(RunMetric):
    """The run's 95th-percentile answer latency (seconds): a guardrail keeps a challenger from being slow."""

    name = "latency_p95_s"
    label = "p95 latency"
    higher_is_better = False
    field = "latency_s"
    unit = " s"
    description = "The 95th percentile (linear interpolation) of the examples' answer latency, in seconds."

    def aggregate(self, values: Sequence[float]) -> float | None:
        """The p95 rounded to 0.1 ms, as ``result.json`` reports it (None without examples)."""
        value = percentile(values, 95)
        return None if value is None else round(value, 4)
