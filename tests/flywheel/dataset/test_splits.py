"""Tests of the split planner: stable, leak-free across nights, stratified, within targets and limits."""

from __future__ import annotations

import hashlib
import math
import os
import random
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flywheel.dataset.splits import (
    NO_TOOL_LABEL,
    Candidate,
    Split,
    SplitPlan,
    bucket,
    golden_selection,
    plan_splits,
    split_of,
)

SALT = "support_router:v1"
DAY1 = datetime(2026, 11, 20, tzinfo=UTC)
PLAN: dict[str, Any] = {
    "salt": SALT,
    "evaluation_fraction": 0.2,
    "validation_fraction": 0.1,
    "evaluation_target": 300,
    "min_evaluation_per_label": 5,
    "min_label_examples": 20,
    "max_train_records": 1500,
}
# 20 labels of skewed (Zipf-like) frequency; the last ones are rare.
LABELS = [f"tool_{index:02d}" for index in range(19)] + [NO_TOOL_LABEL]
WEIGHTS = [1.0 / (index + 1) ** 1.3 for index in range(len(LABELS))]


def make_key(seed: int, index: int) -> str:
    return hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=16).hexdigest()


def day_candidates(day: int, count: int, seed: int = 0) -> list[Candidate]:
    """`count` de-duplicated records logged on day `day` (0 = DAY1), with skewed labels."""
    rng = random.Random(f"{seed}/{day}")
    start = DAY1 + timedelta(days=day)
    return [
        Candidate(
            key=make_key(seed * 1000 + day, index),
            label=rng.choices(LABELS, weights=WEIGHTS)[0],
            timestamp=start + timedelta(milliseconds=rng.randrange(86_400_000)),
            record_id=f"d{day}-{index:06d}",
        )
        for index in range(count)
    ]


def window(first_day: int, days: int, per_day: int = 800) -> list[Candidate]:
    return [
        candidate for day in range(first_day, first_day + days) for candidate in day_candidates(day, per_day)
    ]


def split_ids(plan: SplitPlan, split: Split) -> set[str]:
    return {record_id for record_id, assigned in plan.assignments.items() if assigned is split}


def every_split(plan: SplitPlan) -> dict[str, Split]:
    return {**plan.assignments, **plan.held_out}


# --------------------------------------------------------------------------------------------------
# bucket and split_of


def test_bucket_is_in_unit_interval_and_deterministic() -> None:
    values = [bucket(make_key(0, index), SALT) for index in range(1000)]
    assert all(0.0 <= value < 1.0 for value in values)
    assert values == [bucket(make_key(0, index), SALT) for index in range(1000)]
    assert len(set(values)) == len(values)


def test_split_of_follows_the_bucket() -> None:
    for index in range(2000):
        key = make_key(1, index)
        position = bucket(key, SALT)
        expected = (
            Split.EVALUATION if position < 0.15 else Split.VALIDATION if position < 0.25 else Split.TRAIN
        )
        assert split_of(key, SALT, 0.15, 0.10) is expected
    key = make_key(1, 0)
    assert split_of(key, SALT, 1.0, 0.0) is Split.EVALUATION
    assert split_of(key, SALT, 0.0, 1.0) is Split.VALIDATION
    assert split_of(key, SALT, 0.0, 0.0) is Split.TRAIN


@pytest.mark.parametrize(("evaluation", "validation"), [(-0.1, 0.1), (0.6, 0.5), (0.1, 1.2), (math.nan, 0.1)])
def test_invalid_fractions_are_rejected(evaluation: float, validation: float) -> None:
    with pytest.raises(ValueError, match="fractions"):
        split_of(make_key(0, 0), SALT, evaluation, validation)


def test_fractions_are_honoured_on_50000_keys() -> None:
    n, fractions = 50_000, {Split.EVALUATION: 0.1, Split.VALIDATION: 0.05, Split.TRAIN: 0.85}
    counts = Counter(split_of(make_key(2, index), SALT, 0.1, 0.05) for index in range(n))
    for split, fraction in fractions.items():
        sigma = math.sqrt(n * fraction * (1 - fraction))
        assert abs(counts[split] - n * fraction) < 5 * sigma, (split, counts[split])


def test_buckets_are_uniform() -> None:
    """Ten deciles of 50,000 buckets: a chi-squared far below the 0.1% critical value (27.9, 9 dof)."""
    n = 50_000
    deciles = Counter(int(bucket(make_key(3, index), SALT) * 10) for index in range(n))
    chi2 = sum((deciles[decile] - n / 10) ** 2 / (n / 10) for decile in range(10))
    assert chi2 < 27.9


def test_salt_changes_assignments() -> None:
    keys = [make_key(4, index) for index in range(5000)]
    first = [split_of(key, "salt-a", 0.2, 0.1) for key in keys]
    second = [split_of(key, "salt-b", 0.2, 0.1) for key in keys]
    changed = sum(a is not b for a, b in zip(first, second, strict=True))
    # Independent draws: P(same split) = 0.2² + 0.1² + 0.7² = 0.54, so about 46% change.
    assert 0.40 * len(keys) < changed < 0.52 * len(keys)


def test_splits_are_the_same_in_another_process() -> None:
    """No Python hash(): another process with another hash seed computes the same buckets."""
    keys = [make_key(5, index) for index in range(200)]
    script = (
        "import sys\n"
        "from flywheel.dataset.splits import bucket, split_of\n"
        "for key in sys.stdin.read().split():\n"
        "    print(repr(bucket(key, 'pepper')), split_of(key, 'pepper', 0.2, 0.1).value)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input="\n".join(keys),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "4242"},
    )
    expected = [f"{bucket(key, 'pepper')!r} {split_of(key, 'pepper', 0.2, 0.1).value}" for key in keys]
    assert result.stdout.split("\n")[:-1] == expected


# --------------------------------------------------------------------------------------------------
# plan_splits


def test_plan_covers_every_candidate_once_with_its_bucket_split() -> None:
    candidates = window(0, 3)
    plan = plan_splits(candidates, **PLAN)
    assert not plan.assignments.keys() & plan.held_out.keys()
    assigned = every_split(plan)
    assert assigned.keys() == {candidate.record_id for candidate in candidates}
    for candidate in candidates:
        assert assigned[candidate.record_id] is split_of(candidate.key, SALT, 0.2, 0.1)
    assert all(split is not Split.VALIDATION for split in plan.held_out.values())
    for split, per_label in (
        (Split.EVALUATION, plan.evaluation_per_label),
        (Split.TRAIN, plan.train_per_label),
        (Split.VALIDATION, plan.validation_per_label),
    ):
        assert sum(per_label.values()) == len(split_ids(plan, split))
        assert set(per_label) == {candidate.label for candidate in candidates}
    assert plan.records(Split.VALIDATION) == sorted(split_ids(plan, Split.VALIDATION))


def test_splits_are_stable_between_consecutive_nights() -> None:
    """Night 2's window drops day 0 and adds day 3: the overlapping records never change split."""
    night1, night2 = window(0, 3), window(1, 3)
    plan1, plan2 = plan_splits(night1, **PLAN), plan_splits(night2, **PLAN)
    all1, all2 = every_split(plan1), every_split(plan2)
    overlap = all1.keys() & all2.keys()
    assert len(overlap) == 1600
    for record_id in overlap:
        assert all1[record_id] is all2[record_id]
    by_id = {candidate.record_id: candidate for candidate in night1 + night2}
    for record_id in overlap:
        assert split_of(by_id[record_id].key, SALT, 0.2, 0.1) is all1[record_id]
    # Some overlapping records do move between used and held out (the train cap, the evaluation
    # target), which is allowed within their split.
    moved = {
        record_id
        for record_id in overlap
        if (record_id in plan1.assignments) != (record_id in plan2.assignments)
    }
    assert moved
    assert all(all1[record_id] is not Split.VALIDATION for record_id in moved)


def test_evaluation_never_overlaps_training_across_nights_and_with_golden() -> None:
    night1, night2 = window(0, 3), window(1, 3)
    plan1, plan2 = plan_splits(night1, **PLAN), plan_splits(night2, **PLAN)
    golden = set(golden_selection(night1, salt=SALT, size=100, evaluation_fraction=0.2))
    assert len(golden) == 100
    keys = {candidate.record_id: candidate.key for candidate in night1 + night2}

    def split_keys(plan: SplitPlan, split: Split, *, with_held_out: bool) -> set[str]:
        chosen = every_split(plan) if with_held_out else plan.assignments
        return {keys[record_id] for record_id, assigned in chosen.items() if assigned is split}

    evaluated = (
        split_keys(plan1, Split.EVALUATION, with_held_out=True)
        | split_keys(plan2, Split.EVALUATION, with_held_out=True)
        | {keys[record_id] for record_id in golden}
    )
    trained = split_keys(plan1, Split.TRAIN, with_held_out=False) | split_keys(
        plan2, Split.TRAIN, with_held_out=False
    )
    validated = split_keys(plan1, Split.VALIDATION, with_held_out=False) | split_keys(
        plan2, Split.VALIDATION, with_held_out=False
    )
    assert trained
    assert not evaluated & trained
    assert not evaluated & validated
    assert not trained & validated
    # A later night, with the golden records logged again (same conversations, new records): still
    # evaluation, never trained on.
    relogged = [
        Candidate(keys[record_id], "tool_00", DAY1 + timedelta(days=5), f"again-{record_id}")
        for record_id in sorted(golden)
    ]
    plan3 = plan_splits(window(3, 2) + relogged, **PLAN)
    assert {plan3.assignments.get(c.record_id, plan3.held_out.get(c.record_id)) for c in relogged} == {
        Split.EVALUATION
    }


def test_stratification_represents_every_label_with_enough_examples() -> None:
    candidates = window(0, 5)  # 4,000 records, 20 skewed labels
    totals = Counter(candidate.label for candidate in candidates)
    evaluation_bucket = Counter(
        candidate.label
        for candidate in candidates
        if split_of(candidate.key, SALT, 0.2, 0.1) is Split.EVALUATION
    )
    assert max(totals.values()) > 10 * min(totals.values())  # really skewed
    plan = plan_splits(candidates, **PLAN)
    minimum, enough = PLAN["min_evaluation_per_label"], PLAN["min_label_examples"]
    under = []
    for label, total in totals.items():
        if total < enough:
            continue
        if evaluation_bucket[label] >= minimum:
            assert plan.evaluation_per_label[label] >= minimum, label
        else:
            assert plan.evaluation_per_label[label] == evaluation_bucket[label]
            under.append(label)
    assert plan.under_represented == sorted(under)
    assert sum(plan.evaluation_per_label.values()) == PLAN["evaluation_target"]
    # The quota beyond the minimum follows frequency: the most frequent label gets the most.
    most = totals.most_common(1)[0][0]
    assert plan.evaluation_per_label[most] == max(plan.evaluation_per_label.values())
    assert plan.evaluation_per_label[most] > 4 * minimum


def test_rare_labels_are_listed_as_under_represented() -> None:
    common = [Candidate(make_key(6, index), "common", DAY1, f"c{index}") for index in range(2000)]
    # A label with enough examples overall but none in the evaluation bucket.
    outside = [
        key
        for key in (make_key(7, index) for index in range(500))
        if split_of(key, SALT, 0.2, 0.1) is Split.TRAIN
    ]
    rare = [Candidate(key, "rare", DAY1, f"r{index}") for index, key in enumerate(outside[:30])]
    # And one with too few examples to expect anything.
    tiny = [Candidate(make_key(8, index), "tiny", DAY1, f"t{index}") for index in range(3)]
    plan = plan_splits(common + rare + tiny, **PLAN)
    assert plan.evaluation_per_label["rare"] == 0
    assert plan.under_represented == ["rare"]


def test_minimum_rounds_share_a_small_target_evenly() -> None:
    candidates = window(0, 5)
    plan = plan_splits(candidates, **{**PLAN, "evaluation_target": 30})
    assert sum(plan.evaluation_per_label.values()) == 30
    # 20 eligible labels, a minimum of 5 each does not fit: everyone gets one or two, nobody more.
    eligible = [label for label, count in Counter(c.label for c in candidates).items() if count >= 20]
    assert all(1 <= plan.evaluation_per_label[label] <= 2 for label in eligible)
    assert set(plan.under_represented) == set(eligible)


def test_evaluation_target_is_respected_and_the_rest_is_held_out() -> None:
    candidates = window(0, 3)
    for target in (0, 1, 57, 300):
        plan = plan_splits(candidates, **{**PLAN, "evaluation_target": target})
        evaluation = split_ids(plan, Split.EVALUATION)
        assert len(evaluation) == target
        held = {record_id for record_id, split in plan.held_out.items() if split is Split.EVALUATION}
        bucket_size = sum(split_of(c.key, SALT, 0.2, 0.1) is Split.EVALUATION for c in candidates)
        assert len(evaluation) + len(held) == bucket_size
    # A target larger than the bucket takes the whole bucket.
    plan = plan_splits(candidates, **{**PLAN, "evaluation_target": 10_000})
    assert not any(split is Split.EVALUATION for split in plan.held_out.values())


def test_evaluation_selection_is_deterministic_and_prefers_small_buckets() -> None:
    candidates = window(0, 3)
    plan = plan_splits(candidates, **PLAN)
    shuffled = list(candidates)
    random.Random(9).shuffle(shuffled)
    assert plan_splits(shuffled, **PLAN) == plan
    # Within a label, every selected record has a smaller bucket than every held-out one.
    by_id = {candidate.record_id: candidate for candidate in candidates}
    for label in {candidate.label for candidate in candidates}:
        chosen = [
            bucket(by_id[r].key, SALT) for r in split_ids(plan, Split.EVALUATION) if by_id[r].label == label
        ]
        held = [
            bucket(by_id[r].key, SALT)
            for r, split in plan.held_out.items()
            if split is Split.EVALUATION and by_id[r].label == label
        ]
        if chosen and held:
            assert max(chosen) < min(held), label


def test_max_train_records_keeps_the_newest() -> None:
    candidates = window(0, 3)
    plan = plan_splits(candidates, **{**PLAN, "max_train_records": 500})
    by_id = {candidate.record_id: candidate for candidate in candidates}
    kept = [by_id[record_id] for record_id in split_ids(plan, Split.TRAIN)]
    dropped = [by_id[record_id] for record_id, split in plan.held_out.items() if split is Split.TRAIN]
    assert len(kept) == 500
    assert dropped
    assert min(c.timestamp for c in kept) >= max(c.timestamp for c in dropped)
    unlimited = plan_splits(candidates, **{**PLAN, "max_train_records": None})
    assert len(split_ids(unlimited, Split.TRAIN)) == len(kept) + len(dropped)
    assert all(split is Split.EVALUATION for split in unlimited.held_out.values())


def test_train_cap_breaks_timestamp_ties_by_record_id() -> None:
    keys = [
        key
        for key in (make_key(10, index) for index in range(200))
        if split_of(key, SALT, 0.2, 0.1) is Split.TRAIN
    ]
    candidates = [Candidate(key, "x", DAY1, f"r{index:03d}") for index, key in enumerate(keys)]
    plan = plan_splits(reversed(candidates), **{**PLAN, "max_train_records": 10})
    assert sorted(split_ids(plan, Split.TRAIN)) == [f"r{index:03d}" for index in range(10)]


def test_validation_is_the_whole_bucket() -> None:
    candidates = window(0, 3)
    plan = plan_splits(candidates, **{**PLAN, "max_train_records": 0, "evaluation_target": 0})
    expected = {c.record_id for c in candidates if split_of(c.key, SALT, 0.2, 0.1) is Split.VALIDATION}
    assert set(plan.assignments) == expected
    assert all(split is Split.VALIDATION for split in plan.assignments.values())


def test_repeated_record_ids_or_keys_are_rejected() -> None:
    candidates = day_candidates(0, 10)
    with pytest.raises(ValueError, match="record id"):
        plan_splits([*candidates, candidates[3]], **PLAN)
    duplicate = Candidate(candidates[3].key, "x", DAY1, "another-id")
    with pytest.raises(ValueError, match="de-duplicate"):
        plan_splits([*candidates, duplicate], **PLAN)
    with pytest.raises(ValueError, match="de-duplicate"):
        golden_selection([*candidates, duplicate], salt=SALT, size=3, evaluation_fraction=0.2)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"evaluation_target": -1}, "evaluation_target"),
        ({"max_train_records": -5}, "max_train_records"),
        ({"min_label_examples": 1.5}, "min_label_examples"),
        ({"validation_fraction": 0.9}, "fractions"),
    ],
)
def test_invalid_parameters_are_rejected(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_splits(day_candidates(0, 10), **{**PLAN, **override})


def test_empty_candidates_give_an_empty_plan() -> None:
    plan = plan_splits([], **PLAN)
    assert plan == SplitPlan({}, {}, {}, {}, {}, [])


# --------------------------------------------------------------------------------------------------
# golden_selection


def test_golden_selection_comes_from_the_evaluation_bucket_and_is_stratified() -> None:
    candidates = window(0, 5)
    golden = golden_selection(candidates, salt=SALT, size=120, evaluation_fraction=0.2)
    assert len(golden) == 120
    assert golden == sorted(golden)
    by_id = {candidate.record_id: candidate for candidate in candidates}
    assert all(split_of(by_id[r].key, SALT, 0.2, 0.1) is Split.EVALUATION for r in golden)
    assert all(split_of(by_id[r].key, SALT, 0.2, 0.5) is Split.EVALUATION for r in golden)
    labels = Counter(by_id[r].label for r in golden)
    in_bucket = {c.label for c in candidates if bucket(c.key, SALT) < 0.2}
    assert set(labels) == in_bucket  # every label present in the bucket has at least one golden record
    assert labels.most_common(1)[0][0] == Counter(c.label for c in candidates).most_common(1)[0][0]
    # Deterministic: the order of the candidates plays no part.
    assert (
        golden_selection(list(reversed(candidates)), salt=SALT, size=120, evaluation_fraction=0.2) == golden
    )


def test_golden_selection_stays_out_of_training_on_later_nights() -> None:
    first = window(0, 3)
    golden = golden_selection(first, salt=SALT, size=80, evaluation_fraction=0.2)
    golden_keys = {c.key for c in first if c.record_id in set(golden)}
    for start in range(1, 4):
        later = window(start, 3)
        plan = plan_splits(later, **PLAN)
        trained = {c.key for c in later if plan.assignments.get(c.record_id) is Split.TRAIN}
        assert not golden_keys & trained
