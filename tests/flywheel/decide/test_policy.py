"""The decision policy: every outcome and reason from constructed paired outcomes, and its statistics by
simulation (the A/A false-promotion rate and the detection rate of a 5-point improvement)."""

from __future__ import annotations

import math
from datetime import date

import pytest

from flywheel.config import DecisionPolicyConfig, GuardrailConfig
from flywheel.decide.policy import Outcomes, Reason, decide, tool_shift_reason
from flywheel.decide.simulation import bench_decision, joint_cells, promotion_rate, simulation_policy

PRIMARY = "function_name_and_args_accuracy"


def outcomes(
    name: str,
    eval_type: str,
    right: int,
    n: int = 200,
    *,
    latency: float | None = 1.0,
    offset: int = 0,
    extra: dict[str, list[bool]] | None = None,
) -> Outcomes:
    """A variant that gets examples ``offset .. offset + right - 1`` (mod n) right on the primary metric."""
    keys = [("evaluation", f"e{i:04d}") for i in range(n)]
    flags = [((i - offset) % n) < right for i in range(n)]
    binary = {PRIMARY: dict(zip(keys, flags, strict=True))}
    for metric, values in (extra or {}).items():
        binary[metric] = dict(zip(keys, values, strict=True))
    return Outcomes(name, eval_type, binary, latency)


def policy(**overrides: object) -> DecisionPolicyConfig:
    base = {"floor": 0.3, "min_examples": 100, "guardrails": {}, "bootstrap_resamples": 500}
    return DecisionPolicyConfig.model_validate(base | overrides)


def codes(reasons: list[Reason]) -> list[str]:
    return [r.code for r in reasons]


# --- without a champion -------------------------------------------------------------------------


def test_first_champion_is_the_best_variant_that_reaches_the_floor() -> None:
    variants = [outcomes("m", "base", 20), outcomes("m", "icl", 60), outcomes("m", "customized", 150)]

    decision = decide(policy(), champion=None, variants=variants)

    assert decision.outcome == "promote"
    assert codes(decision.reasons) == ["first_champion"]
    assert decision.challenger is not None and decision.challenger.eval_type == "customized"
    assert [c["eval_type"] for c in decision.candidates] == ["customized", "icl", "base"]
    assert decision.comparisons[PRIMARY]["challenger"] == pytest.approx(0.75)


def test_without_champion_a_challenger_below_the_floor_changes_nothing() -> None:
    decision = decide(policy(floor=0.8), champion=None, variants=[outcomes("m", "customized", 150)])

    assert decision.outcome == "no_change"
    assert codes(decision.reasons) == ["challenger_below_floor"]


def test_too_few_examples_never_promote() -> None:
    decision = decide(policy(min_examples=500), champion=None, variants=[outcomes("m", "customized", 190)])

    assert decision.outcome == "no_change"
    assert "too_few_examples" in codes(decision.reasons)


def test_ties_go_to_the_faster_variant() -> None:
    slow = outcomes("a", "customized", 150, latency=2.0)
    fast = outcomes("b", "customized", 150, latency=0.5)

    decision = decide(policy(), champion=None, variants=[slow, fast])

    assert decision.challenger is fast


def test_only_configured_eval_types_compete() -> None:
    variants = [outcomes("m", "icl", 190), outcomes("m", "customized", 150)]

    decision = decide(policy(challenger_eval_types=["customized"]), champion=None, variants=variants)

    assert decision.challenger is not None and decision.challenger.eval_type == "customized"


def test_no_eligible_variant_is_no_change() -> None:
    decision = decide(policy(challenger_eval_types=["customized"]), champion=None, variants=[])

    assert decision.outcome == "no_change"
    assert codes(decision.reasons) == ["no_challenger"]


# --- against a champion -------------------------------------------------------------------------


def test_significantly_better_challenger_is_promoted_with_its_evidence() -> None:
    champion = outcomes("champion", "champion", 100)
    challenger = outcomes("m", "customized", 140)

    decision = decide(policy(), champion=champion, variants=[challenger])

    assert decision.outcome == "promote"
    assert codes(decision.reasons) == ["challenger_superior"]
    primary = decision.comparisons[PRIMARY]
    assert primary["challenger_only"] == 40 and primary["champion_only"] == 0
    assert primary["p_value"] == pytest.approx(0.5**40)
    assert primary["difference"] == pytest.approx(0.2)
    assert primary["ci_low"] > 0 and primary["ci_high"] >= 0.2
    assert decision.examples == 200


def test_a_small_improvement_is_not_significant() -> None:
    champion = outcomes("champion", "champion", 100)
    # 8 examples only the challenger gets right, 4 only the champion: +2 points, p ~ 0.19.
    challenger = outcomes("m", "customized", 104, offset=-8)

    decision = decide(policy(), champion=champion, variants=[challenger])

    assert decision.outcome == "no_change"
    assert codes(decision.reasons) == ["not_significant"]
    assert decision.comparisons[PRIMARY]["challenger_only"] == 8
    assert decision.comparisons[PRIMARY]["champion_only"] == 4


def test_a_significant_but_tiny_effect_is_below_the_minimum() -> None:
    champion = outcomes("champion", "champion", 100, n=2000)
    challenger = outcomes("m", "customized", 130, n=2000)

    decision = decide(policy(min_effect=0.05, floor=0.01), champion=champion, variants=[challenger])

    assert decision.outcome == "no_change"
    assert codes(decision.reasons) == ["effect_below_min"]


def test_bonferroni_correction_for_the_best_of_several() -> None:
    champion = outcomes("champion", "champion", 100)
    # 9 discordant examples, all for the challenger: p = 1/512 ~ 0.00195.
    best = outcomes("m", "customized", 109)
    others = [outcomes(f"m{i}", "base", 50) for i in range(30)]

    alone = decide(policy(alpha=0.05), champion=champion, variants=[best])
    crowded = decide(policy(alpha=0.05), champion=champion, variants=[best, *others])

    assert alone.outcome == "promote"
    assert crowded.outcome == "no_change"  # alpha / 31 < 0.00195
    assert crowded.comparisons[PRIMARY]["threshold"] == pytest.approx(0.05 / 31)


def test_a_significantly_worse_challenger_raises_an_alert() -> None:
    champion = outcomes("champion", "champion", 150)
    challenger = outcomes("m", "customized", 100)

    decision = decide(policy(), champion=champion, variants=[challenger])

    assert decision.outcome == "alert"
    assert codes(decision.reasons)[0] == "challenger_regressed"
    assert "not_significant" in codes(decision.reasons)


def test_a_champion_below_its_floor_on_fresh_data_is_drift() -> None:
    champion = outcomes("champion", "champion", 50)  # 0.25
    challenger = outcomes("m", "customized", 52)

    decision = decide(policy(floor=0.3), champion=champion, variants=[challenger])

    assert decision.outcome == "alert"
    assert codes(decision.reasons)[0] == "champion_drift"


def test_drift_with_a_better_challenger_promotes_and_says_so() -> None:
    champion = outcomes("champion", "champion", 50)
    challenger = outcomes("m", "customized", 120)

    decision = decide(policy(floor=0.3), champion=champion, variants=[challenger])

    assert decision.outcome == "promote"
    assert codes(decision.reasons) == ["challenger_superior", "champion_drift"]


@pytest.mark.parametrize(
    ("right", "outcome", "reasons"),
    [
        (50, "alert", ["champion_drift", "no_challenger"]),
        (120, "no_change", ["no_challenger", "champion_holds"]),
    ],
)
def test_without_a_challenger_the_champion_is_still_judged_on_fresh_data(
    right: int, outcome: str, reasons: list[str]
) -> None:
    # A run that trained nothing (its retrain policy) and evaluated only the champion.
    decision = decide(
        policy(floor=0.3, challenger_eval_types=["customized"]),
        champion=outcomes("champion", "champion", right),
        variants=[outcomes("m", "base", 190)],  # not eligible
        champion_expected=True,
    )

    assert (decision.outcome, codes(decision.reasons)) == (outcome, reasons)
    assert decision.challenger is None
    assert decision.examples == 200
    assert decision.comparisons[PRIMARY] == {
        "role": "primary",
        "champion": pytest.approx(right / 200),
        "challenger": None,
        "n": 200,
    }


def test_champion_floor_separate_from_the_promotion_floor() -> None:
    champion = outcomes("champion", "champion", 70)  # 0.35
    challenger = outcomes("m", "customized", 72)

    decision = decide(policy(floor=0.3, champion_floor=0.4), champion=champion, variants=[challenger])

    assert codes(decision.reasons)[0] == "champion_drift"


def test_a_guardrail_blocks_promotion() -> None:
    n = 200
    champion_calls = [True] * n
    challenger_calls = [i >= 40 for i in range(n)]  # loses 20 points of function-name accuracy
    champion = outcomes("champion", "champion", 100, extra={"function_name_accuracy": champion_calls})
    challenger = outcomes("m", "customized", 150, extra={"function_name_accuracy": challenger_calls})
    guarded = policy(guardrails={"function_name_accuracy": {"margin": 0.02}})

    decision = decide(guarded, champion=champion, variants=[challenger])

    assert decision.outcome == "no_change"
    assert codes(decision.reasons) == ["guardrail_failed"]
    guard = decision.comparisons["function_name_accuracy"]
    assert guard["passed"] is False
    assert guard["difference"] == pytest.approx(-0.2)
    assert "function_name_accuracy" in decision.reasons[0].message


def test_lower_is_better_guardrails() -> None:
    parse_errors_champion = [False] * 200
    parse_errors_challenger = [i < 30 for i in range(200)]
    champion = outcomes(
        "champion", "champion", 100, latency=1.0, extra={"parse_error_rate": parse_errors_champion}
    )
    challenger = outcomes(
        "m", "customized", 150, latency=1.5, extra={"parse_error_rate": parse_errors_challenger}
    )
    guarded = policy(
        guardrails={
            "parse_error_rate": GuardrailConfig(margin=0.02),
            "latency_p95_s": GuardrailConfig(margin=0.25, relative=True),
        }
    )

    decision = decide(guarded, champion=champion, variants=[challenger])

    assert decision.outcome == "no_change"
    assert decision.comparisons["parse_error_rate"]["passed"] is False
    assert decision.comparisons["latency_p95_s"]["passed"] is False
    assert decision.comparisons["latency_p95_s"]["limit"] == pytest.approx(1.25)

    faster = outcomes("m", "customized", 150, latency=1.2, extra={"parse_error_rate": parse_errors_champion})
    assert decide(guarded, champion=champion, variants=[faster]).outcome == "promote"


def examples_jsonl(right: int, offered: int, n: int = 200) -> list[dict[str, object]]:
    """``examples.jsonl`` lines: the first ``right`` right on the primary metric, the first ``offered``
    calling only offered tools (the metric of docs/examples/my_flywheel/metrics.py), each answered in 1 s."""
    return [
        {
            "example_id": f"e{i:04d}",
            "eval_set": "evaluation",
            "tool_calls": [],
            "scores": {"function_name_and_args": i < right, "offered_tools_only": i < offered},
            "latency_s": 1.0,
        }
        for i in range(n)
    ]


def test_a_metric_of_your_own_guards_the_promotion() -> None:
    own = "my_flywheel.metrics:OfferedToolsOnly"
    guarded = policy(guardrails={own: {"margin": 0.02}})
    champion = Outcomes.from_examples("champion", "champion", examples_jsonl(100, 200), metrics=[own])
    inventive = Outcomes.from_examples("m", "customized", examples_jsonl(150, 170), metrics=[own])
    careful = Outcomes.from_examples("m", "customized", examples_jsonl(150, 200), metrics=[own])

    decision = decide(guarded, champion=champion, variants=[inventive])

    # Better on the primary metric, but it invents tools on 15% of the examples.
    assert decision.outcome == "no_change"
    assert codes(decision.reasons) == ["guardrail_failed"]
    assert decision.reasons[0].message.startswith("offered_tools_only: difference -0.150")
    guard = decision.comparisons["offered_tools_only"]
    assert (guard["champion"], guard["challenger"], guard["passed"]) == (1.0, 0.85, False)
    assert inventive.statistics["latency_p95_s"] == inventive.latency_p95_s == 1.0  # from the lines
    assert decide(guarded, champion=champion, variants=[careful]).outcome == "promote"


def test_a_guardrail_without_examples_does_not_block() -> None:
    champion = outcomes("champion", "champion", 100)
    challenger = outcomes("m", "customized", 150)
    guarded = policy(guardrails={"no_call_accuracy": {"margin": 0.05}})

    decision = decide(guarded, champion=champion, variants=[challenger])

    assert decision.outcome == "promote"
    assert decision.comparisons["no_call_accuracy"]["passed"] is None


def test_only_examples_both_scored_are_compared() -> None:
    champion = outcomes("champion", "champion", 100, n=200)
    challenger = outcomes("m", "customized", 150, n=120)

    decision = decide(policy(min_examples=100), champion=champion, variants=[challenger])

    assert decision.examples == 120
    assert decision.comparisons[PRIMARY]["n"] == 120


# --- failures -----------------------------------------------------------------------------------


def test_upstream_failure_is_an_alert_without_comparison() -> None:
    failure = Reason("data_quality_failed", "batch failed: expect_quarantine_rate")

    decision = decide(
        policy(), champion=None, variants=[outcomes("m", "customized", 150)], upstream_failures=[failure]
    )

    assert decision.outcome == "alert"
    assert decision.reasons == [failure]
    assert decision.comparisons == {}


def test_a_champion_that_could_not_be_evaluated_is_an_alert() -> None:
    decision = decide(
        policy(), champion=None, variants=[outcomes("m", "customized", 150)], champion_expected=True
    )

    assert decision.outcome == "alert"
    assert codes(decision.reasons) == ["champion_evaluation_failed"]


def test_outcomes_from_examples_jsonl_lines() -> None:
    lines = [
        {
            "example_id": "a",
            "eval_set": "evaluation",
            "scores": {"function_name": True, "function_name_and_args": False, "ast": False},
            "tool_calls": [],
        },
        {
            "example_id": "b",
            "eval_set": "golden",
            "scores": {"function_name": True, "function_name_and_args": True, "ast": True, "no_call": True},
            "tool_calls": [],
        },
        {
            "example_id": "c",
            "eval_set": "evaluation",
            "scores": {"function_name": False, "function_name_and_args": False, "ast": False},
            "tool_calls": None,
        },
    ]

    parsed = Outcomes.from_examples("m", "base", lines, latency_p95_s=0.4)

    assert parsed.keys == {("evaluation", "a"), ("golden", "b"), ("evaluation", "c")}
    assert parsed.value("function_name_accuracy") == pytest.approx(2 / 3)
    assert parsed.value("no_call_accuracy") == 1.0
    assert parsed.binary["no_call_accuracy"] == {("golden", "b"): True}
    assert parsed.value("parse_error_rate") == pytest.approx(1 / 3)


# --- a shifted tool distribution ----------------------------------------------------------------

SHIFT = tool_shift_reason(date(2026, 11, 20), 1.5604, 0.5)
"""What ``decide_run`` passes for a day whose validation flagged a tool shift (an API change)."""


def test_the_tool_shift_reason_names_the_day_the_divergence_and_the_threshold() -> None:
    assert (SHIFT.code, SHIFT.message) == (
        "tool_shift",
        "the tool-call distribution of 2026-11-20 shifted from the previous days': KL divergence 1.560 "
        "above max_tool_shift 0.5 (changed or new tools)",
    )


@pytest.mark.parametrize(
    ("champion_right", "challenger_right", "outcome", "reasons"),
    [
        # Nothing to promote: the shift alone makes it an alert, and leads the reasons.
        (100, 100, "alert", ["tool_shift", "not_significant"]),
        # A challenger that is better on the shifted data is promoted; the shift is recorded with it.
        (100, 140, "promote", ["challenger_superior", "tool_shift"]),
        # An alert of the comparison keeps its own reasons first.
        (150, 100, "alert", ["challenger_regressed", "not_significant", "tool_shift"]),
    ],
)
def test_a_tool_shift_is_an_alert_that_does_not_block_a_promotion(
    champion_right: int, challenger_right: int, outcome: str, reasons: list[str]
) -> None:
    decision = decide(
        policy(),
        champion=outcomes("champion", "champion", champion_right),
        variants=[outcomes("m", "customized", challenger_right)],
        data_alerts=[SHIFT],
    )

    assert (decision.outcome, codes(decision.reasons)) == (outcome, reasons)
    assert SHIFT in decision.reasons


def test_a_tool_shift_without_a_challenger_or_with_a_failed_stage_is_an_alert() -> None:
    # A night that trained nothing, its champion holding on the shifted data.
    untrained = decide(
        policy(challenger_eval_types=["customized"]),
        champion=outcomes("champion", "champion", 150),
        variants=[],
        champion_expected=True,
        data_alerts=[SHIFT],
    )
    failure = Reason("training_failed", "train failed: out of memory")
    failed = decide(policy(), champion=None, variants=[], upstream_failures=[failure], data_alerts=[SHIFT])

    assert (untrained.outcome, codes(untrained.reasons)) == (
        "alert",
        ["tool_shift", "no_challenger", "champion_holds"],
    )
    assert (failed.outcome, failed.reasons) == ("alert", [failure, SHIFT])


# --- statistics by simulation -------------------------------------------------------------------


def test_joint_cells_have_the_requested_marginals() -> None:
    both, only_challenger, only_champion, neither = joint_cells(0.7, 0.75, 0.5)

    assert both + only_champion == pytest.approx(0.7)
    assert both + only_challenger == pytest.approx(0.75)
    assert both + only_challenger + only_champion + neither == pytest.approx(1.0)


@pytest.mark.parametrize("challengers", [1, 3])
def test_aa_comparisons_promote_at_most_alpha(challengers: int) -> None:
    # Champion and challenger(s) of equal true accuracy: any promotion is a false one.
    trials = 1000
    result = promotion_rate(
        simulation_policy(DecisionPolicyConfig()),
        champion_accuracy=0.7,
        challenger_accuracy=0.7,
        examples=500,
        trials=trials,
        challengers=challengers,
        seed=11,
    )

    alpha = 0.05
    assert result["promotion_rate"] <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials), result


def test_detection_rate_of_five_points_at_500_examples() -> None:
    result = promotion_rate(
        simulation_policy(DecisionPolicyConfig()),
        champion_accuracy=0.7,
        challenger_accuracy=0.75,
        examples=500,
        trials=400,
        seed=12,
    )

    print(f"detection rate of +5 points at 500 examples: {result['promotion_rate']:.3f}")
    # With correlated models (rho 0.5) a 5-point gain is found most of the time; see docs/decision.md.
    assert 0.5 < result["promotion_rate"] < 1.0


def test_bench_decision_reports_every_scenario() -> None:
    result = bench_decision(DecisionPolicyConfig(), trials=50)

    assert set(result) >= {"aa_one_challenger", "aa_three_challengers", "plus_5_points"}
    assert result["plus_5_points"]["promotion_rate"] > result["aa_one_challenger"]["promotion_rate"]
