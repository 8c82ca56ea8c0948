"""Simulated champion/challenger comparisons: how often the decision policy promotes, by construction.

Each simulated comparison draws ``examples`` paired outcomes from a joint distribution with the given
accuracies and correlation (models that share a base agree on most examples), turns them into
:class:`~flywheel.decide.policy.Outcomes` and runs the real :func:`~flywheel.decide.policy.decide`.
With equal accuracies (an A/A comparison) the promotion rate is the policy's false-promotion rate and
must stay at or under ``alpha``; with a true improvement it is the detection rate (power).
``flywheel bench decision`` prints both; the tests assert the first.
"""

from __future__ import annotations

import math
from typing import Any

from flywheel.config import DecisionPolicyConfig
from flywheel.decide.policy import Outcomes, decide


def joint_cells(champion: float, challenger: float, correlation: float) -> tuple[float, float, float, float]:
    """Probabilities of (both right, only challenger, only champion, both wrong) for two correlated models."""
    spread = math.sqrt(champion * (1 - champion) * challenger * (1 - challenger))
    both = champion * challenger + correlation * spread
    both = min(max(both, max(0.0, champion + challenger - 1)), min(champion, challenger))
    only_challenger = challenger - both
    only_champion = champion - both
    return both, only_challenger, only_champion, 1 - both - only_challenger - only_champion


def promotion_rate(
    policy: DecisionPolicyConfig,
    *,
    champion_accuracy: float,
    challenger_accuracy: float,
    examples: int,
    trials: int,
    challengers: int = 1,
    correlation: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Run ``trials`` simulated decisions; return the promotion rate and its binomial standard error.

    ``challengers`` variants of equal true accuracy compete for the challenger's place (the run
    evaluates base, icl and customized variants), so the best-of selection is part of the simulation.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    cells = joint_cells(champion_accuracy, challenger_accuracy, correlation)
    keys = [("evaluation", str(i)) for i in range(examples)]
    metric = policy.primary_metric
    # Each challenger's outcome is drawn conditionally on the champion's, which gives the joint cells.
    p_if_right = cells[0] / champion_accuracy if champion_accuracy else 0.0
    p_if_wrong = cells[1] / (1 - champion_accuracy) if champion_accuracy < 1 else 0.0
    promotions = 0
    for trial in range(trials):
        champion_flags = rng.random(examples) < champion_accuracy
        variants = []
        for c in range(challengers):
            draws = rng.random(examples)
            flags = np.where(champion_flags, draws < p_if_right, draws < p_if_wrong)
            variants.append(
                Outcomes(f"c{c}", "customized", {metric: dict(zip(keys, flags.tolist(), strict=True))})
            )
        champion = Outcomes(
            "champion", "champion", {metric: dict(zip(keys, champion_flags.tolist(), strict=True))}
        )
        decision = decide(policy, champion=champion, variants=variants, seed=trial)
        promotions += decision.outcome == "promote"
    rate = promotions / trials
    return {
        "trials": trials,
        "examples": examples,
        "challengers": challengers,
        "champion_accuracy": champion_accuracy,
        "challenger_accuracy": challenger_accuracy,
        "correlation": correlation,
        "promotions": promotions,
        "promotion_rate": rate,
        "standard_error": math.sqrt(rate * (1 - rate) / trials),
    }


def simulation_policy(policy: DecisionPolicyConfig) -> DecisionPolicyConfig:
    """``policy`` judged on the primary metric alone (guardrails can only make promotion rarer), with
    the floor and minimum example count out of the way and a short bootstrap (it only reports)."""
    return policy.model_copy(
        update={"guardrails": {}, "floor": 0.0, "min_examples": 1, "bootstrap_resamples": 100}
    )


def bench_decision(policy: DecisionPolicyConfig, *, trials: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The A/A false-promotion rate (one and three challengers) and the detection rate of +5 points."""
    policy = simulation_policy(policy)
    common = {"examples": 500, "trials": trials, "seed": seed}
    return {
        "alpha": policy.alpha,
        "min_effect": policy.min_effect,
        "aa_one_challenger": promotion_rate(policy, champion_accuracy=0.7, challenger_accuracy=0.7, **common),
        "aa_three_challengers": promotion_rate(
            policy, champion_accuracy=0.7, challenger_accuracy=0.7, challengers=3, **common
        ),
        "plus_5_points": promotion_rate(policy, champion_accuracy=0.7, challenger_accuracy=0.75, **common),
        "plus_5_points_three_challengers": promotion_rate(
            policy, champion_accuracy=0.7, challenger_accuracy=0.75, challengers=3, **common
        ),
    }
