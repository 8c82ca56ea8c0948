"""Label-balanced sampling: how often each kind of answer is trained on per epoch.

A workload's traffic is skewed. In a router's training split ``get_order_status`` answers outnumber
``talk_to_human`` answers ten to one, and plain text answers (small talk, policy questions: no tool
call) are about 4 % of the examples. Trained on that natural mix, an adapter sees the rare answers
too seldom and drifts towards calling a tool every time: it loses the ability to answer without one.

So every example gets a label (:func:`label_of`: the tool its answer calls first, or :data:`NO_CALL`)
and every epoch draws its examples so that label L gets a share proportional to
``count(L) ** balance`` (:func:`label_shares`; ``TrainingConfig.label_balance``): 1 keeps the data's
mix, 0 gives every label the same share, 0.5 (the default) is square-root smoothing, halfway between
the two on a log scale. An epoch keeps its length, the number of examples: rare labels are
oversampled (their examples repeat), frequent ones undersampled (an epoch leaves some out, the next
epoch draws others).

:data:`NO_CALL` is never drawn less often than the data has it. Where every request brings its own
tools (BFCL) there are as many labels as tools, most with a handful of examples, and smoothing would
thin the one label that stands for all plain answers: 52 of 220 BFCL examples (24 %) got 6 % of the
draws, and the adapter answered every small-talk request with a call.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

NO_CALL = "no_call"
"""Label of an example whose answer calls no tool."""


def label_of(messages: Sequence[Mapping[str, Any]]) -> str:
    """The name of the first tool call of the final assistant message, or :data:`NO_CALL`."""
    answer = next((m for m in reversed(messages) if m.get("role") == "assistant"), {})
    return label_of_calls(answer.get("tool_calls") or [])


def label_of_calls(calls: Sequence[Mapping[str, Any]]) -> str:
    """The name of the first of ``calls`` (OpenAI ``tool_calls`` entries or ``{"name", "arguments"}``
    reference calls), or :data:`NO_CALL` when there are none: evaluation breaks results down by it."""
    return calls[0].get("function", calls[0]).get("name", "") if calls else NO_CALL


def call_shape_of(messages: Sequence[Mapping[str, Any]]) -> str:
    """The first tool call of the final assistant message with the names of its arguments, e.g.
    ``track_shipment(carrier, tracking_number)``, or :data:`NO_CALL`.

    Balancing by call shape (``TrainingConfig.label_balance_by: call_shape``) treats a call that adds
    an optional argument as its own label, so the rarer form (a carrier named, a price limit given)
    is trained on often enough to learn when the argument belongs in the call.
    """
    answer = next((m for m in reversed(messages) if m.get("role") == "assistant"), {})
    calls = answer.get("tool_calls") or []
    if not calls:
        return NO_CALL
    function = calls[0].get("function", calls[0])
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            arguments = None
    names = sorted(arguments) if isinstance(arguments, dict) else []
    return f"{function.get('name', '')}({', '.join(names)})"


def label_counts(labels: Iterable[str]) -> dict[str, int]:
    """Examples per label, most frequent first (equal counts by name)."""
    return dict(sorted(Counter(labels).items(), key=lambda item: (-item[1], item[0])))


def label_shares(counts: Mapping[str, int], balance: float) -> dict[str, float]:
    """Each label's expected share of an epoch: ``count ** balance``, normalised to add up to 1, but
    :data:`NO_CALL` at least at its share of the data (the other labels then share the rest in the
    same proportions)."""
    weights = {label: count**balance for label, count in counts.items()}
    total = sum(weights.values())
    shares = {label: weight / total for label, weight in weights.items()}
    floor = counts.get(NO_CALL, 0) / (sum(counts.values()) or 1)
    if shares.get(NO_CALL, 0.0) < floor:
        rest = (1 - floor) / (1 - shares[NO_CALL])
        shares = {label: floor if label == NO_CALL else share * rest for label, share in shares.items()}
    return shares


def balanced_epoch(labels: Sequence[str], balance: float, rng: random.Random) -> list[int]:
    """One epoch: ``len(labels)`` indices into ``labels``, each label drawn per :func:`label_shares`.

    A label's number of draws is its expected number rounded down or up at random (systematic
    sampling: the numbers add up to ``len(labels)`` and are exact on average over epochs). Its
    examples are taken in a random order, starting over in a new order once all are used, so an
    oversampled label repeats its examples as evenly as possible and an undersampled one draws a
    random subset. With ``balance=1`` each example is drawn exactly once. The result is shuffled.
    """
    members: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)
    names = sorted(members)
    shares = label_shares({name: len(members[name]) for name in names}, balance)
    bounds = list(itertools.accumulate(shares[name] for name in names))
    offset = rng.random()
    drawn: list[int] = []
    previous = 0
    for name, bound in zip(names, bounds, strict=True):
        end = math.floor(len(labels) * bound / bounds[-1] + offset)
        quota, previous = end - previous, end
        while quota > 0:
            taken = rng.sample(members[name], min(quota, len(members[name])))
            drawn += taken
            quota -= len(taken)
    rng.shuffle(drawn)
    return drawn
