"""Leak-free, stable, stratified train / validation / evaluation splits.

A record's split is a function of its conversation key (:func:`flywheel.validate.keys.conversation_key`)
and a per-workload salt, nothing else: :func:`bucket` places the key in ``[0, 1)`` with a salted
blake2b hash and :func:`split_of` cuts that interval into evaluation ``[0, e)``, validation
``[e, e + v)`` and train ``[e + v, 1)``. The candidate set of a night, the order of records, the day
they were logged and the other records around them play no part, so a conversation keeps its split
from one night to the next and nothing ever seen in evaluation lands in training later. This holds
only while the salt and the two fractions stay the same (and the key definition, see
:data:`flywheel.validate.keys.KEY_VERSION`): changing any of them re-deals every record, and must go
with a new golden set and a fresh start of the evaluation history.

:func:`plan_splits` then decides which records of each bucket a dataset *uses* tonight. That choice
may depend on the candidate set (targets, limits, stratification), but it only ever moves a record
between "used" and "held out" *within* its bucket split, never across splits:

- evaluation: up to ``evaluation_target`` records of the evaluation bucket, stratified by label (the
  called tool, or ``"<no_tool>"``): first up to ``min_evaluation_per_label`` records of every label
  that has at least ``min_label_examples`` records in the candidates, then the remaining quota shared
  in proportion to label frequency. Within a label the records with the smallest bucket values are
  taken first, so the evaluation set changes slowly from night to night (a record stays selected while
  it is in the window) and the choice is deterministic. Evaluation-bucket records not selected are held
  out: never trained on, on any night;
- train: the train bucket, capped at ``max_train_records`` by keeping the newest records (timestamp
  descending, then record id): fresh traffic reflects the agent's current prompts, tools and users,
  and the cap then costs the oldest, most likely stale, behaviour first;
- validation: the whole validation bucket.

Candidates must already be de-duplicated by key (newest record wins, done before planning): two
records with one key would count twice in stratification and targets, so :func:`plan_splits` raises
``ValueError`` on a repeated record id or a repeated key.

:func:`golden_selection` picks a frozen golden evaluation set once per workload, from the evaluation
bucket; see its docstring.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

NO_TOOL_LABEL = "<no_tool>"
"""Label of a record whose reference answer calls no tool."""

_TWO_POW_53 = float(2**53)


class Split(StrEnum):
    """The three splits of a dataset."""

    TRAIN = "train"
    VALIDATION = "validation"
    EVALUATION = "evaluation"


def bucket(key: str, salt: str) -> float:
    """Position of a record in [0, 1) from a salted hash of its conversation key: the only input to its split.

    blake2b-64 of ``salt``, a separator and ``key``, top 53 bits as a float: the same in every process
    and on every machine (no use of Python's randomised ``hash()``), uniform for any salt.
    """
    digest = hashlib.blake2b(f"{salt}\x1f{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / _TWO_POW_53


def split_of(key: str, salt: str, evaluation_fraction: float, validation_fraction: float) -> Split:
    """evaluation if bucket < evaluation_fraction; validation if < evaluation + validation; else train.
    A function of the key alone: a record never changes split between nights, so nothing ever seen in
    evaluation lands in training later."""
    _check_fractions(evaluation_fraction, validation_fraction)
    return _split_at(bucket(key, salt), evaluation_fraction, validation_fraction)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A clean, de-duplicated record of the training window, as the split planner sees it."""

    key: str  # conversation_key of the record
    label: str  # the tool the reference answer calls (first call), or NO_TOOL_LABEL
    timestamp: datetime  # when it was logged (aware UTC); the train cap keeps the newest
    record_id: str


@dataclass(frozen=True)
class SplitPlan:
    """Which split every candidate belongs to, and which of them tonight's dataset uses.

    ``assignments`` and ``held_out`` are disjoint and together cover every candidate, each with its
    bucket split (:func:`split_of`). The per-label counts are over ``assignments`` and list every label
    seen in the candidates (0 where a split has none of it), in label order.
    """

    assignments: dict[str, Split]  # record_id -> split, for the records USED in this dataset
    held_out: dict[str, Split]  # record_id -> bucket split, for records not used tonight (over target/limit)
    evaluation_per_label: dict[str, int]
    train_per_label: dict[str, int]
    validation_per_label: dict[str, int]
    under_represented: list[str]  # labels with >= min_label_examples records but < min in evaluation

    def records(self, split: Split) -> list[str]:
        """Record ids used in `split`, sorted."""
        return sorted(record_id for record_id, assigned in self.assignments.items() if assigned is split)


def plan_splits(
    candidates: Iterable[Candidate],
    *,
    salt: str,
    evaluation_fraction: float,
    validation_fraction: float,
    evaluation_target: int,
    min_evaluation_per_label: int,
    min_label_examples: int,
    max_train_records: int | None,
) -> SplitPlan:
    """Split de-duplicated `candidates` into the records used tonight per split and those held out.

    Bucket membership is :func:`split_of` of each key; within it, evaluation is a stratified selection
    of at most `evaluation_target` records, train the newest `max_train_records` (``None``: no limit)
    and validation the whole bucket (see the module docstring). A label with at least
    `min_label_examples` candidates that ends up with fewer than `min_evaluation_per_label` evaluation
    records (its evaluation bucket is too small, or the target too low for every label's minimum) is
    listed in ``under_represented``. Raises ``ValueError`` on a repeated record id or key, and on
    invalid parameters.
    """
    _check_fractions(evaluation_fraction, validation_fraction)
    _check_count("evaluation_target", evaluation_target)
    _check_count("min_evaluation_per_label", min_evaluation_per_label)
    _check_count("min_label_examples", min_label_examples)
    if max_train_records is not None:
        _check_count("max_train_records", max_train_records)

    positioned = _positioned(candidates, salt)
    label_counts = Counter(candidate.label for _, candidate in positioned)
    by_split: dict[Split, list[tuple[float, Candidate]]] = {split: [] for split in Split}
    for position, candidate in positioned:
        by_split[_split_at(position, evaluation_fraction, validation_fraction)].append((position, candidate))

    assignments: dict[str, Split] = {}
    held_out: dict[str, Split] = {}

    evaluation = _stratified(
        by_split[Split.EVALUATION],
        label_counts,
        size=evaluation_target,
        min_per_label=min_evaluation_per_label,
        min_label_examples=min_label_examples,
    )
    for _, candidate in by_split[Split.EVALUATION]:
        target = assignments if candidate.record_id in evaluation else held_out
        target[candidate.record_id] = Split.EVALUATION

    train = sorted(by_split[Split.TRAIN], key=lambda item: item[1].record_id)
    train.sort(key=lambda item: item[1].timestamp, reverse=True)  # stable: newest first, then record id
    limit = len(train) if max_train_records is None else max_train_records
    for index, (_, candidate) in enumerate(train):
        (assignments if index < limit else held_out)[candidate.record_id] = Split.TRAIN

    for _, candidate in by_split[Split.VALIDATION]:
        assignments[candidate.record_id] = Split.VALIDATION

    per_label: dict[Split, Counter[str]] = {split: Counter() for split in Split}
    for _, candidate in positioned:
        split = assignments.get(candidate.record_id)
        if split is not None:
            per_label[split][candidate.label] += 1
    labels = sorted(label_counts)
    under = [
        label
        for label in labels
        if label_counts[label] >= min_label_examples
        and per_label[Split.EVALUATION][label] < min_evaluation_per_label
    ]
    return SplitPlan(
        assignments=assignments,
        held_out=held_out,
        evaluation_per_label={label: per_label[Split.EVALUATION][label] for label in labels},
        train_per_label={label: per_label[Split.TRAIN][label] for label in labels},
        validation_per_label={label: per_label[Split.VALIDATION][label] for label in labels},
        under_represented=under,
    )


def golden_selection(
    candidates: Iterable[Candidate],
    *,
    salt: str,
    size: int,
    evaluation_fraction: float,
    min_per_label: int = 1,
    min_label_examples: int = 1,
) -> list[str]:
    """Record ids of a frozen golden evaluation set of at most `size` records, sorted.

    Chosen ONCE per workload, from evaluation-bucket records only (smallest bucket values, stratified
    like :func:`plan_splits`: up to `min_per_label` for every label with at least `min_label_examples`
    candidates, the rest in proportion to label frequency); the caller persists the selected records
    and re-uses them on every later run, next to the fresh evaluation set. Because every golden record
    sits in the evaluation bucket of its key, no later night can ever put it (or a duplicate of it) in
    training — provided `salt` and `evaluation_fraction` are those of the nightly plans and the
    evaluation fraction is never lowered. Candidates must be de-duplicated by key, as for
    :func:`plan_splits`.
    """
    _check_fractions(evaluation_fraction, 0.0)
    _check_count("size", size)
    _check_count("min_per_label", min_per_label)
    _check_count("min_label_examples", min_label_examples)
    positioned = _positioned(candidates, salt)
    label_counts = Counter(candidate.label for _, candidate in positioned)
    pool = [(position, candidate) for position, candidate in positioned if position < evaluation_fraction]
    return sorted(
        _stratified(
            pool, label_counts, size=size, min_per_label=min_per_label, min_label_examples=min_label_examples
        )
    )


# --------------------------------------------------------------------------------------------------


def _split_at(position: float, evaluation_fraction: float, validation_fraction: float) -> Split:
    if position < evaluation_fraction:
        return Split.EVALUATION
    if position < evaluation_fraction + validation_fraction:
        return Split.VALIDATION
    return Split.TRAIN


def _check_fractions(evaluation_fraction: float, validation_fraction: float) -> None:
    if not (
        0.0 <= evaluation_fraction <= 1.0
        and 0.0 <= validation_fraction <= 1.0
        and evaluation_fraction + validation_fraction <= 1.0
    ):
        raise ValueError(
            "split fractions must be within [0, 1] and sum to at most 1, got evaluation "
            f"{evaluation_fraction!r} and validation {validation_fraction!r}"
        )


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def _positioned(candidates: Iterable[Candidate], salt: str) -> list[tuple[float, Candidate]]:
    """(bucket, candidate) pairs; raises ValueError on a repeated record id or key."""
    positioned: list[tuple[float, Candidate]] = []
    record_ids: set[str] = set()
    keys: set[str] = set()
    for candidate in candidates:
        if candidate.record_id in record_ids:
            raise ValueError(f"record id {candidate.record_id!r} appears twice among the split candidates")
        if candidate.key in keys:
            raise ValueError(
                f"conversation key {candidate.key} appears twice among the split candidates "
                f"(record {candidate.record_id!r}): de-duplicate by key before planning splits"
            )
        record_ids.add(candidate.record_id)
        keys.add(candidate.key)
        positioned.append((bucket(candidate.key, salt), candidate))
    return positioned


def _stratified(
    pool: list[tuple[float, Candidate]],
    label_counts: Counter[str],
    *,
    size: int,
    min_per_label: int,
    min_label_examples: int,
) -> set[str]:
    """Record ids of at most `size` records of `pool`, stratified by label.

    1. Minimum: up to `min_per_label` records of every label with at least `min_label_examples`
       candidates (`label_counts`), dealt in rounds (each label's best record, then each label's second
       best...) ordered by bucket value, so a target too small for every minimum is shared evenly.
    2. The remaining quota in proportion to the labels' frequency among all candidates, by largest
       remainder (ties: the label whose next record has the smaller bucket value); a label out of
       records hands its share on to the others.
    Within a label, records are taken by ascending bucket value (then record id).
    """
    queues: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for position, candidate in pool:
        queues[candidate.label].append((position, candidate.record_id))
    for queue in queues.values():
        queue.sort()
    taken: dict[str, int] = dict.fromkeys(queues, 0)
    left = size

    # 1. Minimum per label, round by round.
    eligible = [label for label in queues if label_counts[label] >= min_label_examples]
    for round_index in range(min_per_label):
        offered = sorted(
            (queues[label][round_index], label) for label in eligible if round_index < len(queues[label])
        )
        if not offered or not left:
            break
        for _, label in offered[:left]:
            taken[label] += 1
        left -= min(left, len(offered))

    # 2. The rest in proportion to label frequency (largest remainder), capped by what each label holds.
    while left > 0:
        open_labels = [label for label in queues if taken[label] < len(queues[label])]
        if not open_labels:
            break
        weight = sum(label_counts[label] for label in open_labels)
        shares: dict[str, int] = {}
        remainders: list[tuple[int, float, str]] = []
        for label in open_labels:
            spare = len(queues[label]) - taken[label]
            whole, remainder = divmod(left * label_counts[label], weight)
            shares[label] = min(whole, spare)
            if shares[label] < spare:
                remainders.append((-remainder, queues[label][taken[label] + shares[label]][0], label))
        extra = left - sum(shares.values())
        for _, _, label in sorted(remainders)[:extra]:
            shares[label] += 1
        for label, share in shares.items():
            taken[label] += share
            left -= share

    return {record_id for label, queue in queues.items() for _, record_id in queue[: taken[label]]}
