"""The champion/challenger decision of one run: a pure function of the policy and the paired outcomes.

:func:`decide` takes every evaluated variant's per-example outcomes (:class:`Outcomes`), the
champion's, the upstream failures of the run, and the workload's :class:`DecisionPolicyConfig`, and
returns a :class:`Decision`: ``promote``, ``alert`` or ``no_change`` with the reasons and, for every
compared metric, both values, the paired difference with its interval, the test and whether it
passed. Nothing here reads files or databases, so the policy is tested (and simulated) directly.

The rules, in order:

1. An upstream failure (extraction, data quality, dataset, training or evaluation) is an alert: the
   run has nothing trustworthy to compare.
2. The challenger is the best eligible variant of the run by the primary metric (ties: lower p95
   latency, then the order given).
3. Without a champion, the challenger is promoted when it reaches the floor on at least
   ``min_examples`` examples.
4. With a champion, both are compared on the examples both scored. The challenger is promoted when it
   is significantly better on the primary metric (exact one-sided McNemar test at ``alpha`` divided by
   the number of variants that competed for the challenger's place, a Bonferroni correction for
   picking the best of several), by at least ``min_effect``, reaches the floor, and is non-inferior
   on every guardrail (paired bootstrap bound beyond the margin; p95 latency within its margin).
5. Otherwise an alert when the champion fell below its floor on this run's fresh data (drift) or the
   challenger is significantly worse than the champion (two-sided test at ``alpha``), else no change.
   A run without any eligible variant (one that trained nothing, by its retrain policy) still alerts
   when the champion fell below its floor.
6. A tool shift that validation flagged (``tool_shift``, one of ``data_alerts``: an API change) is
   drift to react to, not a verdict on the models: it turns ``no_change`` into an alert and is added
   to the reasons of an alert or a promotion (a challenger that beats the champion on the shifted
   data is still promoted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from flywheel.config import DecisionPolicyConfig, GuardrailConfig
from flywheel.decide.paired import discordant_counts, mcnemar_exact, paired_bootstrap_interval
from flywheel.evaluate.metrics import Metric, RunMetric, example_metrics, get_metric

Outcome = Literal["promote", "alert", "no_change"]
ExampleKey = tuple[str, str]
"""``(eval_set, example_id)``: one example of the evaluation split or of the golden set."""

LATENCY = "latency_p95_s"
"""The run statistic that also breaks ranking ties (the faster variant wins)."""

UPSTREAM_FAILURES = {
    "extract": "extract_failed",
    "validate": "data_quality_failed",
    "build_dataset": "dataset_failed",
    "train": "training_failed",
    "evaluate": "evaluation_failed",
}
"""Reason code of each stage whose failure leaves the run nothing to compare."""


@dataclass(frozen=True)
class Reason:
    """Why a decision came out as it did: a stable code for machines and a sentence for people."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass
class Outcomes:
    """One evaluated variant: its per-example binary outcomes per metric and its run statistics.

    ``binary[metric][key]`` is the variant's score on example ``key`` for a per-example metric (for
    ``parse_error_rate``: whether its answer failed to parse). A metric that does not apply to an
    example (``no_call_accuracy`` on an example that needs a tool) has no entry for it.
    ``statistics[metric]`` is the value of a run statistic (:class:`RunMetric`); the p95 latency is
    also ``latency_p95_s``, the ranking's tie-break.
    """

    candidate_id: str
    eval_type: str
    binary: dict[str, dict[ExampleKey, bool]]
    latency_p95_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.statistics.setdefault(LATENCY, self.latency_p95_s)

    @property
    def name(self) -> str:
        return f"{self.candidate_id}/{self.eval_type}"

    @property
    def keys(self) -> set[ExampleKey]:
        return set().union(*(set(v) for v in self.binary.values())) if self.binary else set()

    def value(self, metric: str, keys: set[ExampleKey] | None = None) -> float | None:
        """The metric's mean over ``keys`` (default: every example scored on it); None without examples."""
        scores = self.binary.get(metric, {})
        flags = [v for k, v in scores.items() if keys is None or k in keys]
        return sum(flags) / len(flags) if flags else None

    @classmethod
    def from_examples(
        cls,
        candidate_id: str,
        eval_type: str,
        records: Sequence[Mapping[str, Any]],
        *,
        latency_p95_s: float | None = None,
        info: dict[str, Any] | None = None,
        metrics: Sequence[str] = (),
    ) -> Outcomes:
        """Outcomes from the lines of an evaluation's ``examples.jsonl``.

        Each built-in metric is read back, and each of ``metrics`` (the workload's own, by dotted
        path): a per-example metric's score of each line, a run statistic from the lines' values.
        ``latency_p95_s``: the p95 latency the evaluation reported (else computed from the lines).
        """
        keyed = [((str(r.get("eval_set") or "evaluation"), str(r["example_id"])), r) for r in records]
        binary = {
            m.name: {key: outcome for key, r in keyed if (outcome := m.outcome(r)) is not None}
            for m in example_metrics(metrics)
        }
        run_metrics = {
            m.name: m for m in [get_metric(LATENCY), *map(get_metric, metrics)] if isinstance(m, RunMetric)
        }
        statistics = {
            name: m.aggregate([r[m.field] for r in records if r.get(m.field) is not None])
            for name, m in run_metrics.items()
        }
        if latency_p95_s is not None:
            statistics[LATENCY] = latency_p95_s
        return cls(candidate_id, eval_type, binary, statistics[LATENCY], info or {}, statistics)


@dataclass
class Decision:
    """What the run decided, why, and the evidence (every figure the report and the alert show)."""

    outcome: Outcome
    reasons: list[Reason]
    primary_metric: str
    examples: int | None
    champion: Outcomes | None
    challenger: Outcomes | None
    comparisons: dict[str, dict[str, Any]]
    candidates: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        def side(outcomes: Outcomes | None) -> dict[str, Any] | None:
            if outcomes is None:
                return None
            return {
                "candidate_id": outcomes.candidate_id,
                "eval_type": outcomes.eval_type,
                **outcomes.info,
            }

        return {
            "outcome": self.outcome,
            "reasons": [r.to_dict() for r in self.reasons],
            "primary_metric": self.primary_metric,
            "examples": self.examples,
            "champion": side(self.champion),
            "challenger": side(self.challenger),
            "comparisons": self.comparisons,
            "candidates": self.candidates,
        }


def decide(
    policy: DecisionPolicyConfig,
    *,
    champion: Outcomes | None,
    variants: Sequence[Outcomes],
    champion_expected: bool = False,
    upstream_failures: Sequence[Reason] = (),
    data_alerts: Sequence[Reason] = (),
    seed: int = 0,
) -> Decision:
    """Decide between the champion and the best of ``variants`` (see the module docstring for the rules).

    ``champion_expected``: the workload has a champion, so a missing ``champion`` means its
    evaluation failed (an alert) rather than that there is none yet. ``data_alerts``: what the run's
    data itself alerts about (:func:`tool_shift_reason`), whatever the comparison decides.
    """
    primary = get_metric(policy.primary_metric).name
    eligible = [v for v in variants if v.eval_type in policy.challenger_eval_types]

    def finish(
        outcome: Outcome,
        reasons: list[Reason],
        challenger: Outcomes | None = None,
        comparisons: dict[str, dict[str, Any]] | None = None,
        examples: int | None = None,
        ranking: list[dict[str, Any]] | None = None,
    ) -> Decision:
        if data_alerts and outcome == "no_change":
            outcome, reasons = "alert", [*data_alerts, *reasons]
        elif data_alerts:
            reasons = [*reasons, *data_alerts]  # a promotion still happens; the alert is recorded with it
        return Decision(
            outcome, reasons, primary, examples, champion, challenger, comparisons or {}, ranking or []
        )

    if upstream_failures:
        return finish("alert", list(upstream_failures))
    if champion is None and champion_expected:
        return finish(
            "alert",
            [Reason("champion_evaluation_failed", "the champion could not be evaluated on this run's data")],
        )
    if not eligible:
        reasons = [Reason("no_challenger", "no evaluated variant may become the challenger")]
        if champion is None:
            return finish("no_change", reasons)
        # A run that trained nothing (its retrain policy) still judges the champion on its fresh data.
        value, n = champion.value(primary), len(champion.binary.get(primary, {}))
        comparisons = {primary: {"role": "primary", "champion": value, "challenger": None, "n": n}}
        if value is not None and value < policy.drift_floor:
            return finish("alert", [_drift(primary, value, policy), *reasons], None, comparisons, n)
        if value is not None:
            reasons.append(
                Reason(
                    "champion_holds",
                    f"the champion's {primary} on this run's data is {value:.3f} on {n} examples, at or "
                    f"above its floor {policy.drift_floor}",
                )
            )
        return finish("no_change", reasons, None, comparisons, n)

    keys = _common_keys(champion, eligible)
    ranking = _rank(eligible, primary, keys)
    challenger = next(v for v in eligible if v.name == ranking[0]["name"])
    reasons: list[Reason] = []
    n = len(keys)
    challenger_value = challenger.value(primary, keys)

    if champion is None:
        comparisons = {primary: {"role": "primary", "champion": None, "challenger": challenger_value, "n": n}}
        if n < policy.min_examples:
            reasons.append(_too_few(n, policy))
        if challenger_value is None or challenger_value < policy.floor:
            reasons.append(_below_floor(challenger, challenger_value, policy))
        if reasons:
            return finish("no_change", reasons, challenger, comparisons, n, ranking)
        message = (
            f"no champion yet: {challenger.name} reaches the floor with {primary} "
            f"{challenger_value:.3f} >= {policy.floor} on {n} examples"
        )
        return finish("promote", [Reason("first_champion", message)], challenger, comparisons, n, ranking)

    alpha = policy.alpha / len(eligible)
    comparisons = {primary: _primary(champion, challenger, primary, keys, alpha, policy, seed)}
    for metric, guardrail in policy.guardrails.items():
        definition = get_metric(metric)
        comparisons.setdefault(
            definition.name, _guardrail(champion, challenger, definition, guardrail, keys, policy, seed)
        )
    first = comparisons[primary]
    champion_value = first["champion"]
    drifted = champion_value is not None and champion_value < policy.drift_floor
    drift = _drift(primary, champion_value, policy)

    blockers: list[Reason] = []
    if n < policy.min_examples:
        blockers.append(_too_few(n, policy))
    if first["p_value"] >= alpha:
        blockers.append(
            Reason(
                "not_significant",
                f"{challenger.name} vs champion on {primary}: {_fmt(challenger_value)} vs "
                f"{_fmt(champion_value)}, McNemar p = {first['p_value']:.4g} >= {alpha:.4g}",
            )
        )
    elif first["difference"] < policy.min_effect:
        blockers.append(
            Reason(
                "effect_below_min",
                f"{challenger.name} improves {primary} by {first['difference']:+.3f}, less than the "
                f"minimum effect {policy.min_effect}",
            )
        )
    if challenger_value is None or challenger_value < policy.floor:
        blockers.append(_below_floor(challenger, challenger_value, policy))
    for metric, entry in comparisons.items():
        if entry["role"] == "guardrail" and entry["passed"] is False:
            blockers.append(Reason("guardrail_failed", f"{metric}: {entry['note']}"))

    if not blockers:
        reasons = [
            Reason(
                "challenger_superior",
                f"{challenger.name} beats the champion on {primary}: {_fmt(challenger_value)} vs "
                f"{_fmt(champion_value)} ({first['difference']:+.3f}, 95% CI [{first['ci_low']:+.3f}, "
                f"{first['ci_high']:+.3f}]), McNemar p = {first['p_value']:.4g} < {alpha:.4g}, on {n} "
                "paired examples; every guardrail holds",
            )
        ]
        return finish("promote", reasons + ([drift] if drifted else []), challenger, comparisons, n, ranking)

    alerts: list[Reason] = [drift] if drifted else []
    worse_p = first["p_value_two_sided"]
    if first["difference"] < 0 and worse_p < policy.alpha:
        alerts.append(
            Reason(
                "challenger_regressed",
                f"{challenger.name} is significantly worse than the champion on {primary}: "
                f"{_fmt(challenger_value)} vs {_fmt(champion_value)}, two-sided McNemar p = {worse_p:.4g}",
            )
        )
    if alerts:
        return finish("alert", alerts + blockers, challenger, comparisons, n, ranking)
    return finish("no_change", blockers, challenger, comparisons, n, ranking)


def _common_keys(champion: Outcomes | None, eligible: Sequence[Outcomes]) -> set[ExampleKey]:
    """The examples every compared model scored (all of them when there is no champion to pair with)."""
    keys = set.intersection(*(v.keys for v in eligible))
    return keys & champion.keys if champion is not None else keys


def _rank(eligible: Sequence[Outcomes], primary: str, keys: set[ExampleKey]) -> list[dict[str, Any]]:
    order = {v.name: i for i, v in enumerate(eligible)}

    def sort_key(v: Outcomes) -> tuple[float, float, int]:
        value = v.value(primary, keys)
        latency = v.latency_p95_s if v.latency_p95_s is not None else float("inf")
        return (-(value if value is not None else -1.0), latency, order[v.name])

    ranked = sorted(eligible, key=sort_key)
    return [
        {
            "name": v.name,
            "candidate_id": v.candidate_id,
            "eval_type": v.eval_type,
            "primary": v.value(primary, keys),
            "latency_p95_s": v.latency_p95_s,
            "rank": i + 1,
        }
        for i, v in enumerate(ranked)
    ]


def _paired(
    champion: Outcomes, challenger: Outcomes, metric: str, keys: set[ExampleKey]
) -> tuple[list[bool], list[bool]]:
    a, b = challenger.binary.get(metric, {}), champion.binary.get(metric, {})
    shared = sorted(k for k in keys if k in a and k in b)
    return [a[k] for k in shared], [b[k] for k in shared]


def _primary(
    champion: Outcomes,
    challenger: Outcomes,
    metric: str,
    keys: set[ExampleKey],
    alpha: float,
    policy: DecisionPolicyConfig,
    seed: int,
) -> dict[str, Any]:
    ours, theirs = _paired(champion, challenger, metric, keys)
    only_challenger, only_champion = discordant_counts(ours, theirs)
    n = len(ours)
    entry: dict[str, Any] = {
        "role": "primary",
        "n": n,
        "champion": sum(theirs) / n if n else None,
        "challenger": sum(ours) / n if n else None,
        "difference": (sum(ours) - sum(theirs)) / n if n else 0.0,
        "challenger_only": only_challenger,
        "champion_only": only_champion,
        "statistic": only_challenger,
        "test": "exact McNemar, one-sided (challenger better)",
        "p_value": mcnemar_exact(only_challenger, only_champion),
        "p_value_two_sided": mcnemar_exact(only_challenger, only_champion, "two-sided"),
        "threshold": alpha,
        "min_effect": policy.min_effect,
        "ci_low": None,
        "ci_high": None,
    }
    if n:
        low, high = paired_bootstrap_interval(
            ours, theirs, confidence=0.95, resamples=policy.bootstrap_resamples, seed=seed
        )
        entry |= {"ci_low": low, "ci_high": high}
    entry["passed"] = entry["p_value"] < alpha and entry["difference"] >= policy.min_effect
    return entry


def _guardrail(
    champion: Outcomes,
    challenger: Outcomes,
    definition: Metric,
    guardrail: GuardrailConfig,
    keys: set[ExampleKey],
    policy: DecisionPolicyConfig,
    seed: int,
) -> dict[str, Any]:
    lower_is_better = not definition.higher_is_better
    entry: dict[str, Any] = {"role": "guardrail", "margin": guardrail.margin, "relative": guardrail.relative}
    if isinstance(definition, RunMetric):
        return entry | _run_guardrail(definition, challenger, champion, guardrail)
    ours_flags, theirs_flags = _paired(champion, challenger, definition.name, keys)
    n = len(ours_flags)
    if not n:
        return entry | {
            "champion": None,
            "challenger": None,
            "difference": None,
            "n": 0,
            "ci_low": None,
            "ci_high": None,
            "passed": None,
            "note": "no paired example this metric applies to",
        }
    only_challenger, only_champion = discordant_counts(ours_flags, theirs_flags)
    # A one-sided bound at the policy's alpha: the (1 - 2 alpha) two-sided interval's end.
    low, high = paired_bootstrap_interval(
        ours_flags,
        theirs_flags,
        confidence=1 - 2 * policy.alpha,
        resamples=policy.bootstrap_resamples,
        seed=seed,
    )
    difference = (sum(ours_flags) - sum(theirs_flags)) / n
    bound = high if lower_is_better else low
    passed = bound < guardrail.margin if lower_is_better else bound > -guardrail.margin
    direction = "at most" if lower_is_better else "at least"
    note = (
        f"difference {difference:+.3f}, {1 - policy.alpha:.0%} bound {bound:+.3f} must be {direction} "
        f"{'+' if lower_is_better else '-'}{guardrail.margin} on {n} examples"
    )
    return entry | {
        "champion": sum(theirs_flags) / n,
        "challenger": sum(ours_flags) / n,
        "difference": difference,
        "n": n,
        "challenger_only": only_challenger,
        "champion_only": only_champion,
        "ci_low": low,
        "ci_high": high,
        "passed": passed,
        "note": note,
    }


def _run_guardrail(
    metric: RunMetric, challenger: Outcomes, champion: Outcomes, guardrail: GuardrailConfig
) -> dict[str, Any]:
    """A run statistic's guardrail: the challenger's value within the margin of the champion's."""
    ours, theirs = challenger.statistics.get(metric.name), champion.statistics.get(metric.name)
    entry: dict[str, Any] = {
        "champion": theirs,
        "challenger": ours,
        "n": None,
        "ci_low": None,
        "ci_high": None,
    }
    if ours is None or theirs is None:
        return entry | {"difference": None, "passed": None, "note": f"{metric.label} not measured"}
    allowed = theirs * guardrail.margin if guardrail.relative else guardrail.margin
    limit = theirs + allowed if not metric.higher_is_better else theirs - allowed
    passed = ours <= limit if not metric.higher_is_better else ours >= limit
    unit = metric.unit
    note = f"{metric.label} {ours:.3f}{unit} vs champion {theirs:.3f}{unit} (limit {limit:.3f}{unit})"
    return entry | {"difference": ours - theirs, "limit": limit, "passed": passed, "note": note}


def _drift(primary: str, champion_value: float | None, policy: DecisionPolicyConfig) -> Reason:
    return Reason(
        "champion_drift",
        f"the champion's {primary} on this run's data is {_fmt(champion_value)}, below its floor "
        f"{policy.drift_floor}",
    )


def tool_shift_reason(day: date, shift: float | None, max_tool_shift: float) -> Reason:
    """The alert for a day whose tool-call distribution moved beyond ``max_tool_shift`` (KL divergence)."""
    return Reason(
        "tool_shift",
        f"the tool-call distribution of {day} shifted from the previous days': KL divergence "
        f"{_fmt(shift)} above max_tool_shift {max_tool_shift} (changed or new tools)",
    )


def _too_few(n: int, policy: DecisionPolicyConfig) -> Reason:
    return Reason(
        "too_few_examples", f"{n} paired evaluation examples, fewer than min_examples {policy.min_examples}"
    )


def _below_floor(challenger: Outcomes, value: float | None, policy: DecisionPolicyConfig) -> Reason:
    return Reason(
        "challenger_below_floor",
        f"{challenger.name} reaches {policy.primary_metric} {_fmt(value)}, below the floor {policy.floor}",
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
