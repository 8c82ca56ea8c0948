"""Few-shot selection: determinism, budget (recounted with the real tokenizer), coverage, similarity, prompts.

Uses small router-like examples built here, SmolLM2's real tokenizer from the ``tiny_model`` fixture, and
the tiny random Llama itself as the "embedding model" (mechanics only, not quality).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from flywheel.config import IclConfig
from flywheel.evaluate.examples import EvalExample, TrainExample
from flywheel.evaluate.icl import ShotSelector, shot_cost, with_shots
from flywheel.train.formatting import to_template_messages

SYSTEM = {"role": "system", "content": "You are the support assistant of a shop. Use the tools."}


def _tool(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The {name} tool.",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    }


TOOLS = [_tool(name) for name in ("get_order_status", "track_shipment", "start_return", "talk_to_human")]


def train(example_id: str, user: str, tool: str | None = None, content: str | None = None) -> TrainExample:
    """A router-like training example: system, user, and an answer calling ``tool`` (or plain text)."""
    if tool:
        call = {
            "id": f"call_{example_id}",
            "type": "function",
            "function": {"name": tool, "arguments": json.dumps({"order_id": "A-12345"})},
        }
        answer = {"role": "assistant", "content": None, "tool_calls": [call]}
    else:
        answer = {"role": "assistant", "content": content or "Happy to help!"}
    return TrainExample(
        example_id=example_id,
        messages=[SYSTEM, {"role": "user", "content": user}, answer],
        tools=TOOLS,
    )


def query(user: str, tools: list[str], example_id: str = "q1") -> EvalExample:
    """An evaluation example offering ``tools``."""
    return EvalExample(
        example_id=example_id,
        messages=[SYSTEM, {"role": "user", "content": user}],
        tools=[_tool(name) for name in tools],
        reference_calls=[],
        reference_content=None,
        label="<no_tool>",
    )


def recount(tokenizer: Any, shot: TrainExample) -> int:
    """The shot cost counted independently: contents of the converted non-system messages."""
    messages = to_template_messages(shot.messages[1:], [], native=False)
    return sum(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) for m in messages)


@pytest.fixture(scope="module")
def tokenizer(tiny_model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


POOL = [
    train("p01", "Where is my order A-10001? It has not arrived yet.", "get_order_status"),
    train("p02", "What is the status of order B-20002?", "get_order_status"),
    train("p03", "Has my order C-30003 shipped already?", "get_order_status"),
    train("p04", "Can you track package 1Z999 with UPS for me?", "track_shipment"),
    train("p05", "I want to return the blender from order D-40004, it arrived broken.", "start_return"),
    train("p06", "Please let me talk to a real person.", "talk_to_human"),
    train("p07", "Thanks, that is all!", content="You're welcome, have a great day!"),
    train("p08", "Do you ship to Germany?", content="Yes, we ship to Germany."),
]


def test_same_seed_same_shots_and_seeds_break_ties_differently(tokenizer: Any) -> None:
    tied = [train(f"t{i:02d}", "Where is my order?", "get_order_status") for i in range(12)]
    example = query("Where is my order?", ["get_order_status"])
    config = IclConfig(max_shots=2, token_budget=1024, seed=0)
    first = ShotSelector(tied, tokenizer, config).select(example)
    again = ShotSelector(tied, tokenizer, config).select(example)
    assert [s.example_id for s in first] == [s.example_id for s in again]
    assert len(first) == 2
    choices = {
        tuple(
            s.example_id
            for s in ShotSelector(tied, tokenizer, IclConfig(max_shots=2, seed=seed)).select(example)
        )
        for seed in range(8)
    }
    assert len(choices) > 1


def test_only_pool_examples_are_used_and_never_the_example_itself(tokenizer: Any) -> None:
    pool = [*POOL, train("q1", "Where is my order A-10001? It has not arrived yet.", "get_order_status")]
    selector = ShotSelector(pool, tokenizer, IclConfig(max_shots=5, token_budget=4096))
    shots = selector.select(query("Where is my order A-10001? It has not arrived yet.", ["get_order_status"]))
    assert shots
    assert all(any(shot is member for member in pool) for shot in shots)
    assert "q1" not in [s.example_id for s in shots]


@pytest.mark.parametrize("budget", [16, 30, 60, 120])
def test_token_budget_is_respected_with_the_real_tokenizer(tokenizer: Any, budget: int) -> None:
    selector = ShotSelector(POOL, tokenizer, IclConfig(max_shots=8, token_budget=budget))
    offered = ["get_order_status", "track_shipment", "start_return", "talk_to_human"]
    for text in ("Where is order A-10001?", "I want to return my blender", "thanks"):
        shots = selector.select(query(text, offered))
        used = sum(recount(tokenizer, shot) for shot in shots)
        assert used <= budget
        assert selector.shot_tokens(shots) == used
    assert all(shot_cost(tokenizer, shot) == recount(tokenizer, shot) for shot in POOL)


def test_tools_offered_are_each_demonstrated(tokenizer: Any) -> None:
    many_a = [
        train(f"a{i}", f"Where is my order A-1000{i}? Status please.", "get_order_status") for i in range(6)
    ]
    pool = [*many_a, train("b0", "Follow the parcel with the carrier.", "track_shipment")]
    example = query("Where is my order A-55555? Status please.", ["get_order_status", "track_shipment"])
    shots = ShotSelector(pool, tokenizer, IclConfig(max_shots=2)).select(example)
    assert {name for shot in shots for name in shot.tool_names} == {"get_order_status", "track_shipment"}


def test_a_plain_answer_counts_as_one_more_thing_to_demonstrate(tokenizer: Any) -> None:
    many_a = [train(f"a{i}", f"Where is my order A-1000{i}?", "get_order_status") for i in range(6)]
    pool = [*many_a, train("n0", "Hello there", content="Hi! How can I help?")]
    shots = ShotSelector(pool, tokenizer, IclConfig(max_shots=3)).select(
        query("Where is my order A-55555?", ["get_order_status"])
    )
    assert [s.tool_names for s in shots].count([]) == 1
    assert len(shots) == 3


def test_the_nearly_identical_example_is_chosen_and_placed_last(tokenizer: Any) -> None:
    pool = [
        *POOL,
        train("p09", "I want to return the toaster from order E-50005, it arrived broken.", "start_return"),
    ]
    example = query(
        "I want to return the toaster from order E-50006, it arrived broken!",
        ["get_order_status", "track_shipment", "start_return", "talk_to_human"],
    )
    shots = ShotSelector(pool, tokenizer, IclConfig(max_shots=3)).select(example)
    assert len(shots) == 3
    assert shots[-1].example_id == "p09"


def test_shots_calling_tools_not_offered_are_avoided(tokenizer: Any) -> None:
    similar_foreign = [train(f"c{i}", f"Where is my order A-1000{i}?", "track_shipment") for i in range(4)]
    offered_tool = [train(f"o{i}", f"Cancel everything number {i}", "get_order_status") for i in range(2)]
    example = query("Where is my order A-10009?", ["get_order_status"])
    shots = ShotSelector([*similar_foreign, *offered_tool], tokenizer, IclConfig(max_shots=2)).select(example)
    assert sorted(s.example_id for s in shots) == ["o0", "o1"]
    # with nothing better, foreign shots still fill the slots (they show the call format)
    shots = ShotSelector(similar_foreign, tokenizer, IclConfig(max_shots=2)).select(example)
    assert len(shots) == 2


def test_an_oversized_pool_example_is_never_chosen(tokenizer: Any) -> None:
    text = "Where is my order A-10001? " * 40
    huge = train("huge", text, "get_order_status")
    budget = 64
    assert recount(tokenizer, huge) > budget
    shots = ShotSelector([*POOL, huge], tokenizer, IclConfig(max_shots=8, token_budget=budget)).select(
        query(text, ["get_order_status"])
    )
    assert shots
    assert "huge" not in [s.example_id for s in shots]
    only_huge = ShotSelector([huge], tokenizer, IclConfig(token_budget=budget))
    assert only_huge.select(query(text, ["get_order_status"])) == []


def test_an_empty_pool_gives_no_shots(tokenizer: Any) -> None:
    selector = ShotSelector([], tokenizer, IclConfig())
    assert selector.select(query("Where is my order?", ["get_order_status"])) == []
    assert selector.shot_tokens([]) == 0


def test_with_shots_keeps_the_system_message_first_and_the_question_last() -> None:
    example = query("Where is my order A-1?", ["get_order_status"])
    shots = [POOL[0], POOL[6]]
    before = (copy.deepcopy(example.messages), copy.deepcopy([s.messages for s in shots]))
    prompt = with_shots(example.messages, shots)
    assert prompt[0] == SYSTEM
    assert prompt[-1] == {"role": "user", "content": "Where is my order A-1?"}
    assert prompt[1:-1] == [*POOL[0].messages[1:], *POOL[6].messages[1:]]
    assert [m["role"] for m in prompt].count("system") == 1
    prompt[1]["content"] = "changed"
    prompt[2]["tool_calls"][0]["function"]["name"] = "changed"
    assert (example.messages, [s.messages for s in shots]) == before
    no_system = with_shots(example.messages[1:], shots)
    assert no_system == [*POOL[0].messages[1:], *POOL[6].messages[1:], example.messages[-1]]


def test_embedding_similarity_with_the_tiny_model(tokenizer: Any, tiny_model: str) -> None:
    pool = [
        *POOL,
        train("dup", "My parcel 1Z777 from FedEx seems stuck, where is it?", "track_shipment"),
    ]
    example = query(
        "My parcel 1Z777 from FedEx seems stuck, where is it?",
        ["get_order_status", "track_shipment", "start_return", "talk_to_human"],
    )
    config = IclConfig(max_shots=3, token_budget=90, similarity="embedding", embedding_model=tiny_model)
    selector = ShotSelector(pool, tokenizer, config)
    shots = selector.select(example)
    assert [s.example_id for s in shots] == [s.example_id for s in selector.select(example)]
    assert shots[-1].example_id == "dup"
    assert sum(recount(tokenizer, shot) for shot in shots) <= 90
    similarity = selector.similarities(example.messages[-1]["content"])
    assert max(similarity) == similarity[-1] == pytest.approx(1.0, abs=1e-4)
