"""Label-balanced sampling of training examples: labels, the epoch draw and the trainer's batches."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest

from flywheel.train.sampling import (
    NO_CALL,
    balanced_epoch,
    call_shape_of,
    label_counts,
    label_of,
    label_shares,
)
from flywheel.train.trainer import _length_grouped_batches, encode_split

ROUTER_COUNTS = {
    "get_order_status": 563,
    "track_shipment": 391,
    "search_products": 296,
    "start_return": 283,
    "get_product_details": 185,
    "update_shipping_address": 145,
    NO_CALL: 83,
    "talk_to_human": 54,
}
"""Labels of a real router train split (2,000 examples)."""
ROUTER_LABELS = [label for label, count in ROUTER_COUNTS.items() for _ in range(count)]


def call(name: str) -> dict[str, Any]:
    return {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": "{}"}}


def calling(*names: str) -> dict[str, Any]:
    """An assistant message calling these tools, in this order."""
    return {"role": "assistant", "content": None, "tool_calls": [call(name) for name in names]}


def test_label_is_the_first_tool_of_the_final_answer_or_no_call():
    ask = {"role": "user", "content": "Where is order P-1?"}
    assert label_of([ask, calling("get_order_status")]) == "get_order_status"
    assert label_of([ask, calling("track_shipment", "start_return")]) == "track_shipment"
    assert label_of([ask, {"role": "assistant", "content": "Hello!"}]) == NO_CALL
    assert label_of([ask, {"role": "assistant", "content": "Hello!", "tool_calls": None}]) == NO_CALL
    # Only the final assistant message counts: an earlier call answered by a tool does not.
    earlier = [
        ask,
        calling("get_order_status"),
        {"role": "tool", "tool_call_id": "call_get_order_status", "content": '{"status": "shipped"}'},
        {"role": "assistant", "content": "It has shipped."},
    ]
    assert label_of(earlier) == NO_CALL


def test_call_shape_is_the_first_tool_with_its_argument_names():
    ask = {"role": "user", "content": "Where is 1Z999AA10123456784?"}

    def answer(arguments: Any) -> dict[str, Any]:
        function = {"name": "track_shipment", "arguments": arguments}
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": function}],
        }

    named = answer(json.dumps({"tracking_number": "1Z999AA10123456784", "carrier": "ups"}))
    assert call_shape_of([ask, named]) == "track_shipment(carrier, tracking_number)"
    assert (
        call_shape_of([ask, answer({"tracking_number": "1Z999AA10123456784"})])
        == "track_shipment(tracking_number)"
    )
    # Arguments that are not a JSON object still give the tool its own label, without names.
    assert call_shape_of([ask, answer("not json")]) == "track_shipment()"
    assert call_shape_of([ask, {"role": "assistant", "content": "Hello!"}]) == NO_CALL


def test_label_counts_are_most_frequent_first():
    assert list(label_counts(["b", "a", "c", "a", "c", "a"]).items()) == [("a", 3), ("c", 2), ("b", 1)]


@pytest.mark.parametrize("balance", [0.0, 0.5, 1.0])
def test_each_label_is_drawn_in_proportion_to_count_to_the_balance(balance):
    rng = random.Random(0)
    drawn: Counter[str] = Counter()
    epochs = 100
    for _ in range(epochs):
        epoch = balanced_epoch(ROUTER_LABELS, balance, rng)
        assert len(epoch) == len(ROUTER_LABELS)
        drawn.update(ROUTER_LABELS[i] for i in epoch)

    total = sum(count**balance for count in ROUTER_COUNTS.values())
    for label, count in ROUTER_COUNTS.items():
        assert drawn[label] / (epochs * len(ROUTER_LABELS)) == pytest.approx(count**balance / total, abs=1e-3)
    assert label_shares(ROUTER_COUNTS, balance) == pytest.approx(
        {label: count**balance / total for label, count in ROUTER_COUNTS.items()}
    )


def test_square_root_smoothing_lifts_the_rare_labels():
    shares = label_shares(ROUTER_COUNTS, 0.5)
    assert shares[NO_CALL] == pytest.approx(0.076, abs=1e-3)  # 4.2 % of the data
    assert shares["get_order_status"] == pytest.approx(0.198, abs=1e-3)  # 28.2 % of the data
    natural, uniform = label_shares(ROUTER_COUNTS, 1.0), label_shares(ROUTER_COUNTS, 0.0)
    for label, share in shares.items():
        assert min(natural[label], uniform[label]) < share < max(natural[label], uniform[label])


def test_plain_answers_are_never_drawn_less_often_than_the_data_has_them():
    # BFCL: every request brings its own tools, so each tool is a label of a few examples and no_call
    # is one label among ~100. Smoothing alone would give it 6 % of the draws for 24 % of the data.
    counts = {NO_CALL: 52, **{f"tool_{i}": 1 + i % 12 for i in range(90)}}
    smoothed = {label: count**0.5 for label, count in counts.items()}
    assert smoothed[NO_CALL] / sum(smoothed.values()) < 0.06

    shares = label_shares(counts, 0.5)

    natural = 52 / sum(counts.values())
    assert shares[NO_CALL] == pytest.approx(natural)
    assert sum(shares.values()) == pytest.approx(1.0)
    # The tools keep their smoothed proportions to each other.
    assert shares["tool_11"] / shares["tool_0"] == pytest.approx(12**0.5)
    labels = [label for label, count in counts.items() for _ in range(count)]
    drawn = Counter(labels[i] for _ in range(50) for i in balanced_epoch(labels, 0.5, random.Random(2)))
    assert drawn[NO_CALL] / (50 * len(labels)) == pytest.approx(natural, abs=2e-3)


def test_the_natural_mix_draws_every_example_once():
    rng = random.Random(3)
    for _ in range(20):
        epoch = balanced_epoch(ROUTER_LABELS, 1.0, rng)
        assert sorted(epoch) == list(range(len(ROUTER_LABELS)))
    assert balanced_epoch(ROUTER_LABELS, 1.0, rng) != balanced_epoch(ROUTER_LABELS, 1.0, rng)


def test_rare_labels_repeat_evenly_and_frequent_ones_draw_without_replacement():
    epoch = balanced_epoch(ROUTER_LABELS, 0.0, random.Random(1))

    per_example = Counter(epoch)
    rare = [i for i, label in enumerate(ROUTER_LABELS) if label == "talk_to_human"]
    assert {per_example[i] for i in rare} == {4, 5}  # 250 draws of 54 examples
    frequent = [i for i in epoch if ROUTER_LABELS[i] == "get_order_status"]
    assert len(frequent) == 250  # of 563
    assert len(set(frequent)) == len(frequent)


def test_the_draw_is_deterministic_under_the_seed():
    assert balanced_epoch(ROUTER_LABELS, 0.5, random.Random(7)) == balanced_epoch(
        ROUTER_LABELS, 0.5, random.Random(7)
    )
    rng = random.Random(0)
    examples = [([1] * rng.randint(50, 2000), [1]) for _ in ROUTER_LABELS]

    def first_batches(seed: int) -> list[list[int]]:
        batches = _length_grouped_batches(examples, ROUTER_LABELS, 8, seed=seed, balance=0.5)
        return [[len(ids) for ids, _ in next(batches)] for _ in range(600)]  # more than two epochs

    assert first_batches(0) == first_batches(0)
    assert first_batches(0) != first_batches(1)


def test_balanced_batches_follow_the_mix_and_stay_length_grouped():
    rng = random.Random(0)
    examples = [([len(label)] * rng.randint(50, 2000), [1]) for label in ROUTER_LABELS]
    label_by_first_token = {len(label): label for label in ROUTER_COUNTS}
    assert len(label_by_first_token) == len(ROUTER_COUNTS)  # the first token tells the label
    batches = _length_grouped_batches(examples, ROUTER_LABELS, 8, seed=0, balance=0.0)

    drawn: Counter[str] = Counter()
    padded = real = 0
    for _ in range(250):  # one epoch: 2,000 examples
        batch = next(batches)
        drawn.update(label_by_first_token[ids[0]] for ids, _ in batch)
        real += sum(len(ids) for ids, _ in batch)
        padded += max(len(ids) for ids, _ in batch) * len(batch)

    assert drawn == dict.fromkeys(ROUTER_COUNTS, 250)
    assert 1 - real / padded < 0.05


def test_encode_split_labels_each_kept_example(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tools = [{"type": "function", "function": {"name": "track_shipment", "parameters": {"type": "object"}}}]
    ask = {"role": "user", "content": "Hi"}
    answers = [
        calling("track_shipment"),
        {"role": "assistant", "content": "word " * 400},  # longer than max_seq_length: skipped
        {"role": "assistant", "content": "Hello! How can I help?"},
        calling("start_return", "track_shipment"),
    ]
    lines = [json.dumps({"messages": [ask, answer], "tools": tools}) for answer in answers]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")

    split = encode_split(AutoTokenizer.from_pretrained(tiny_model), str(tmp_path), "train", 256)

    assert split.skipped == 1
    assert split.answer_labels == ["track_shipment", NO_CALL, "start_return"]
    assert split.call_shapes == ["track_shipment()", NO_CALL, "start_return()"]
    assert len(split.examples) == len(split.answer_labels)
    assert split.label_counts == {NO_CALL: 1, "start_return": 1, "track_shipment": 1}
