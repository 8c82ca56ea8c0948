"""How long an evaluated answer may get and where it ends: the token cap sized from the references,
answers cut by it (``truncated``), the stop at a completed tool call, and the per-label breakdown.

* The ``auto`` cap and ``stop_after_tool_call`` resolved from reference answers, with SmolLM2's
  tokenizer (the tiny model's).
* :class:`ToolCallEnd` on SmolLM2 token sequences rendered as training renders answers.
* The tiny model, scripted to answer one tool call and then chatter on, evaluated end to end: it
  stops at its call, or runs into the cap and is marked truncated, scored the same either way.
* An endpoint: the cap goes out as ``max_tokens``, its ``finish_reason`` ``length`` marks truncation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flywheel.config import EndpointConfig, EvaluationConfig, GenerationConfig, ModelConfig
from flywheel.evaluate.examples import EvalExample, load_examples
from flywheel.evaluate.generation import AnswerLimits, Prompt
from flywheel.evaluate.limits import AUTO_EXTRA_TOKENS, AUTO_MARGIN, answer_limits, reference_answer_tokens
from flywheel.evaluate.parsing import parse_text
from flywheel.evaluate.runner import evaluate_model, headline
from flywheel.train.formatting import (
    IGNORE_INDEX,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    encode_for_training,
    encode_prompt,
    format_tool_call,
)

if TYPE_CHECKING:
    from openai_server import OpenAIServer

# The fixture; loading the module as a plugin (not importing it here) lets pytest rewrite its asserts.
pytest_plugins = ["openai_server"]

SYSTEM = {"role": "system", "content": "You are the support assistant of an online shop. Use the tools."}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order_status",
            "description": "Look up an order.",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "track_shipment",
            "description": "Latest carrier scans of a package.",
            "parameters": {
                "type": "object",
                "properties": {"tracking_number": {"type": "string"}, "carrier": {"type": "string"}},
            },
        },
    },
]
GREETING = "Hello! I can help with orders and deliveries. What can I do for you?"
# (record id, user request, reference calls, reference content)
EXAMPLES = [
    ("ex-1", "where is my order A-48213?", [("get_order_status", {"order_id": "A-48213"})], None),
    ("ex-2", "status of B-10442 please", [("get_order_status", {"order_id": "B-10442"})], None),
    (
        "ex-3",
        "track 1Z999AA10123456784, it's ups",
        [("track_shipment", {"tracking_number": "1Z999AA10123456784", "carrier": "ups"})],
        None,
    ),
    ("ex-4", "hello there!", [], GREETING),
]
TWO_CALLS = (
    "ex-5",
    "status of A-11111 and where is parcel 1Z55?",
    [("get_order_status", {"order_id": "A-11111"}), ("track_shipment", {"tracking_number": "1Z55"})],
    None,
)
CALL = format_tool_call({"name": "get_order_status", "arguments": {"order_id": "A-48213"}})
"""What the scripted model answers to every request: ex-1's reference call."""
CHATTER = " Anything else?"
"""What the scripted model goes on with after its call (its last token repeating up to the cap)."""


def write_dataset(root: Path, examples: list[tuple[str, str, list[Any], str | None]]) -> str:
    """``evaluation.jsonl`` of ``examples``, shaped like the pipeline's (no ``label``: it is derived)."""
    root.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "record_id": record_id,
            "messages": [SYSTEM, {"role": "user", "content": user}],
            "tools": TOOLS,
            "reference": {
                "tool_calls": [{"name": name, "arguments": arguments} for name, arguments in calls],
                "content": content,
            },
        }
        for record_id, user, calls, content in examples
    ]
    (root / "evaluation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(root)


def answer_tokens(tokenizer: Any, example: EvalExample) -> int:
    """The reference answer's tokens counted by hand: SmolLM2's template takes no tools, so training
    writes the answer as fallback text (the content, then one ``<tool_call>`` block per call, a line
    each) and ends it with ``<|im_end|>``."""
    parts = [example.reference_content] if example.reference_content else []
    parts += [format_tool_call(call) for call in example.reference_calls]
    return len(tokenizer("\n".join(parts), add_special_tokens=False)["input_ids"]) + 1


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def smollm2(tiny_model: str) -> Any:
    """SmolLM2-135M-Instruct's tokenizer and chat template (the tiny model's)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread while the test runs: on a small shared machine more only spin-wait."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_dataset(tmp_path_factory.mktemp("answer-limits") / "router", EXAMPLES)


# --- the cap and the stop, resolved from the references ---------------------------------------------


def test_auto_cap_is_the_longest_reference_answer_with_a_margin(smollm2: Any, dataset: str) -> None:
    examples = load_examples(dataset)
    counted = [answer_tokens(smollm2, e) for e in examples]
    longest = max(counted)

    sized = answer_limits(GenerationConfig(), examples, smollm2)

    assert [reference_answer_tokens(smollm2, e) for e in examples] == counted
    # Counted without the tools in the prompt: with them, training supervises the same answer tokens.
    for example, tokens in zip(examples, counted, strict=True):
        answer: dict[str, Any] = {"role": "assistant", "content": example.reference_content}
        if example.reference_calls:
            answer["tool_calls"] = example.reference_calls
        encoded = encode_for_training(smollm2, [*example.messages, answer], example.tools, max_length=4096)
        assert encoded.supervised_tokens == tokens
    assert sized.longest_reference_tokens == longest
    assert sized.limits == AnswerLimits(math.ceil(longest * AUTO_MARGIN) + AUTO_EXTRA_TOKENS, True)
    assert sized.record(GenerationConfig()) == {
        "max_new_tokens": sized.limits.max_new_tokens,
        "max_new_tokens_setting": "auto",
        "longest_reference_tokens": longest,
        "stop_after_tool_call": True,
        "stop_after_tool_call_setting": "auto",
        "max_reference_calls": 1,
    }
    # Never above the configured maximum; an integer is a fixed cap, counted from nothing.
    bounded = answer_limits(GenerationConfig(max_new_tokens_limit=longest - 1), examples, smollm2)
    assert bounded.limits.max_new_tokens == longest - 1
    fixed = answer_limits(GenerationConfig(max_new_tokens=12), examples, smollm2)
    assert (fixed.limits.max_new_tokens, fixed.longest_reference_tokens) == (12, None)
    # An endpoint (no local tokenizer): the maximum, and the server decides where an answer ends.
    served = answer_limits(GenerationConfig(max_new_tokens_limit=300), examples, None)
    assert (served.limits, served.longest_reference_tokens) == (AnswerLimits(300, False), None)


def test_stop_after_tool_call_is_auto_only_where_no_reference_makes_two_calls(
    smollm2: Any, tmp_path: Path
) -> None:
    parallel = load_examples(write_dataset(tmp_path / "parallel", [*EXAMPLES, TWO_CALLS]))
    single = [e for e in parallel if len(e.reference_calls) <= 1]

    def stops(examples: list[EvalExample], setting: Any) -> bool:
        generation = GenerationConfig(max_new_tokens=32, stop_after_tool_call=setting)
        return answer_limits(generation, examples, smollm2).limits.stop_after_tool_call

    assert stops(single, "auto") is True
    assert stops(parallel, "auto") is False
    assert answer_limits(GenerationConfig(), parallel, smollm2).max_calls == 2
    assert stops(parallel, True) is True
    assert stops(single, False) is False


# --- the stop condition on SmolLM2 tokens ------------------------------------------------------------


def trained_answer(tokenizer: Any, answer: dict[str, Any]) -> list[int]:
    """The answer's token ids exactly as training supervises them (``<|im_end|>`` last)."""
    messages = [SYSTEM, {"role": "user", "content": "hi"}, {"role": "assistant", **answer}]
    encoded = encode_for_training(tokenizer, messages, TOOLS, max_length=4096)
    return [
        token for token, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX
    ]


def openai_calls(*calls: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
        for i, (name, arguments) in enumerate(calls)
    ]


def ends(tokenizer: Any, ids: list[int]) -> list[int]:
    """The lengths of the prefixes of ``ids`` at which :class:`ToolCallEnd` says a call is complete,
    each prefix checked as generation would, one more token each time."""
    from flywheel.evaluate.local import ToolCallEnd

    end = ToolCallEnd(tokenizer)
    return [k for k in range(1, len(ids) + 1) if end(ids[:k])]


def test_tool_call_end_fires_on_the_last_token_of_the_closing_tag(smollm2: Any) -> None:
    one = trained_answer(smollm2, {"content": None, "tool_calls": openai_calls(*EXAMPLES[0][2])})
    assert smollm2.decode(one[-1:]) == "<|im_end|>" and len(one) > 12  # the tags take several tokens

    (stop,) = ends(smollm2, one)

    assert stop == len(one) - 1  # right before the end-of-turn token the model was taught to emit next
    # So the answer at the stop is the answer the end-of-turn token would have ended: same text, same calls.
    assert smollm2.decode(one[:stop]) == smollm2.decode(one[:-1]) == CALL
    assert parse_text(smollm2.decode(one[:stop])).tool_calls == parse_text(CALL).tool_calls


def test_tool_call_end_needs_an_opened_block_and_fires_per_block(smollm2: Any) -> None:
    text_first = trained_answer(
        smollm2, {"content": "Let me check.", "tool_calls": openai_calls(*EXAMPLES[0][2])}
    )
    assert ends(smollm2, text_first) == [len(text_first) - 1]
    # A closing tag that closes nothing is not a completed call.
    stray = smollm2(f"I cannot use {TOOL_CALL_CLOSE} here.", add_special_tokens=False)["input_ids"]
    assert ends(smollm2, stray) == []
    # Parallel calls: the first block is complete before the second begins, which is why ``auto``
    # keeps answers going on a workload whose references make several calls.
    two = trained_answer(smollm2, {"content": None, "tool_calls": openai_calls(*TWO_CALLS[2])})
    first, second = ends(smollm2, two)
    assert smollm2.decode(two[:first]).count(TOOL_CALL_OPEN) == 1
    assert second == len(two) - 1


# --- a scripted tiny model, end to end -----------------------------------------------------------------


def script(model: Any, start: int, answer: list[int]) -> None:
    """Make ``model`` answer ``answer`` after any prompt ending in token ``start``, then repeat the
    answer's last token forever.

    With every attention and MLP output zeroed, the last hidden state is the current token's embedding,
    so the next token depends on the current one only; the output head then maps each token of the
    chain ``start, *answer`` to its successor (the chain's tokens must be distinct).
    """
    import torch

    chain = [start, *answer]
    assert len(set(chain)) == len(chain)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings = model.get_input_embeddings().weight
        head = torch.zeros_like(embeddings)
        for current, following in zip(chain, [*answer, answer[-1]], strict=True):
            head[following] += model.model.norm(embeddings[current])
        model.lm_head.weight = torch.nn.Parameter(head)  # no longer tied to the embeddings


def chain_start(tokenizer: Any) -> int:
    """The last token of every prompt: the generation prompt's."""
    return encode_prompt(tokenizer, [SYSTEM, {"role": "user", "content": "hi"}], TOOLS)[-1]


def call_tokens(tokenizer: Any) -> list[int]:
    """:data:`CALL` in three tokens of the scripted model's tokenizer: the tags and the JSON between."""
    return tokenizer.convert_tokens_to_ids([TOOL_CALL_OPEN, _body(), TOOL_CALL_CLOSE])


def _body() -> str:
    return CALL.removeprefix(TOOL_CALL_OPEN).removesuffix(TOOL_CALL_CLOSE)


@pytest.fixture(scope="module")
def scripted_model(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model answering :data:`CALL` to everything, then :data:`CHATTER` up to the cap.

    Its tokenizer is SmolLM2's with the tags and the call's JSON as tokens of their own (Qwen's
    tokenizers have the tags as tokens too), so that every token of the answer is distinct.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.add_tokens([TOOL_CALL_OPEN, TOOL_CALL_CLOSE, _body()])
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    known = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():  # random rows of their own (the default start them all near the mean)
        seeded = torch.Generator().manual_seed(0)
        added = torch.randn(embeddings[known:].shape, generator=seeded)
        embeddings[known:] = added * embeddings[:known].std()
    chatter = tokenizer(CHATTER, add_special_tokens=False)["input_ids"]
    script(model, chain_start(tokenizer), call_tokens(tokenizer) + chatter)
    model.config.tie_word_embeddings = False
    path = tmp_path_factory.mktemp("scripted-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def evaluate(dataset: str, model: ModelConfig, output: Path, **settings: Any) -> dict[str, Any]:
    """Evaluate in-process; result.json with ``lines`` (examples.jsonl) added."""
    result = evaluate_model(dataset, model, "base", EvaluationConfig.model_validate(settings), str(output))
    assert json.loads((output / "result.json").read_text()) == result
    return result | {"lines": read_jsonl(output / "examples.jsonl")}


def per_label(name: float, name_and_args: float, truncated: int, n: int = 1) -> dict[str, Any]:
    return {
        "n": n,
        "function_name_accuracy": name,
        "function_name_and_args_accuracy": name_and_args,
        "tool_call_ast_accuracy": name_and_args,
        "parse_error_rate": 0.0,
        "truncated": truncated,
    }


@pytest.fixture(scope="module")
def stopped(scripted_model: str, dataset: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The scripted model evaluated with the default settings (``auto`` cap, ``auto`` stop)."""
    return evaluate(dataset, ModelConfig(base_model=scripted_model), tmp_path_factory.mktemp("stopped"))


@pytest.fixture(scope="module")
def cut(scripted_model: str, dataset: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The scripted model evaluated without the stop at a completed call: it runs into the cap."""
    settings = {"generation": {"stop_after_tool_call": False}}
    return evaluate(
        dataset, ModelConfig(base_model=scripted_model), tmp_path_factory.mktemp("cut"), **settings
    )


def test_a_model_stops_at_its_completed_tool_call(stopped: dict[str, Any], scripted_model: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(scripted_model)
    longest = max(answer_tokens(tokenizer, e) for e in load_examples(stopped["dataset"]))
    cap = math.ceil(longest * AUTO_MARGIN) + AUTO_EXTRA_TOKENS

    assert stopped["answer_limits"] == {
        "max_new_tokens": cap,
        "max_new_tokens_setting": "auto",
        "longest_reference_tokens": longest,
        "stop_after_tool_call": True,
        "stop_after_tool_call_setting": "auto",
        "max_reference_calls": 1,
    }
    for line in stopped["lines"]:
        assert line["raw_output"] == CALL
        assert (line["finish_reason"], line["truncated"], line["tokens_out"]) == ("tool_call", False, 3)
    assert stopped["truncated_examples"] == 0
    assert headline(stopped)["truncated_examples"] == 0


def test_per_label_accuracy_is_in_the_result(stopped: dict[str, Any]) -> None:
    # Every answer calls get_order_status for A-48213: ex-1 is right, ex-2 has the right tool and the
    # wrong order, ex-3 and the greeting (no_call) have the wrong tool.
    assert [line["label"] for line in stopped["lines"]] == [
        "get_order_status",
        "get_order_status",
        "track_shipment",
        "no_call",
    ]
    assert stopped["per_tool"] == {
        "get_order_status": per_label(1.0, 0.5, 0, n=2),
        "no_call": per_label(0.0, 0.0, 0),
        "track_shipment": per_label(0.0, 0.0, 0),
    }
    assert stopped["metrics"]["function_name_and_args_accuracy"]["value"] == 0.25


def test_an_answer_cut_by_the_cap_is_marked_truncated_and_scored_on_what_it_says(
    cut: dict[str, Any], stopped: dict[str, Any]
) -> None:
    cap = cut["answer_limits"]["max_new_tokens"]
    assert cap == stopped["answer_limits"]["max_new_tokens"]
    assert cut["answer_limits"]["stop_after_tool_call"] is False
    for line in cut["lines"]:
        assert line["raw_output"].startswith(CALL + CHATTER)
        assert (line["finish_reason"], line["truncated"], line["tokens_out"]) == ("length", True, cap)
    assert cut["truncated_examples"] == 4
    assert headline(cut)["truncated_examples"] == 4
    assert {label: entry["truncated"] for label, entry in cut["per_tool"].items()} == {
        "get_order_status": 2,
        "no_call": 1,
        "track_shipment": 1,
    }
    # The chatter after the closed block is text outside the call: the calls, so the scores, are the
    # stopped run's. Truncation is reported next to the scores, not folded into them.
    assert [line["tool_calls"] for line in cut["lines"]] == [line["tool_calls"] for line in stopped["lines"]]
    assert cut["metrics"] == stopped["metrics"]


@pytest.mark.usefixtures("one_torch_thread")
def test_stopping_at_the_call_gives_the_answer_an_end_of_turn_token_would_have(scripted_model: str) -> None:
    from flywheel.evaluate.local import LocalGenerator

    generator = LocalGenerator(scripted_model, GenerationConfig(batch_size=2))
    tokenizer = generator.tokenizer
    # Now the model ends its call with the end-of-turn token, as training teaches it to.
    script(generator.model, chain_start(tokenizer), [*call_tokens(tokenizer), generator.stop_ids[0]])
    prompts = [Prompt([SYSTEM, {"role": "user", "content": user}], TOOLS) for _, user, _, _ in EXAMPLES]

    early = generator.generate(prompts, AnswerLimits(32, stop_after_tool_call=True))
    natural = generator.generate(prompts, AnswerLimits(32, stop_after_tool_call=False))

    assert [g.text for g in early] == [g.text for g in natural] == [CALL] * 4
    assert {(g.finish_reason, g.tokens_out) for g in early} == {("tool_call", 3)}
    assert {(g.finish_reason, g.tokens_out) for g in natural} == {("stop", 4)}


# --- an endpoint ----------------------------------------------------------------------------------------


def test_an_endpoint_gets_the_cap_as_max_tokens_and_reports_length_as_truncated(
    openai_server: OpenAIServer, dataset: str, tmp_path: Path
) -> None:
    def answer(body: dict[str, Any]) -> dict[str, Any]:
        if body["messages"][-1]["content"] == "hello there!":
            return {"content": "Hello! I can help with orders, deliveries and", "finish_reason": "length"}
        return {
            "tool_calls": [{"function": {"name": "get_order_status", "arguments": {"order_id": "A-48213"}}}]
        }

    openai_server.responder = answer
    endpoint = EndpointConfig(base_url=openai_server.base_url, model=openai_server.model, max_retries=0)

    result = evaluate(
        dataset, ModelConfig(endpoint=endpoint), tmp_path / "out", generation={"max_new_tokens_limit": 300}
    )

    assert {body["max_tokens"] for body in openai_server.bodies()} == {300}
    assert result["answer_limits"]["max_new_tokens"] == 300
    assert result["answer_limits"]["stop_after_tool_call"] is False
    assert {line["example_id"]: (line["finish_reason"], line["truncated"]) for line in result["lines"]} == {
        "ex-1": ("tool_calls", False),
        "ex-2": ("tool_calls", False),
        "ex-3": ("tool_calls", False),
        "ex-4": ("length", True),
    }
    assert result["truncated_examples"] == 1
    # Cut off, the greeting still calls no tool: right on every metric, and counted as truncated.
    assert result["per_tool"]["no_call"] == per_label(1.0, 1.0, 1)
