"""The evaluation job (``flywheel evaluate``) end to end: real models, real files, a real HTTP endpoint.

* The tiny random Llama evaluated through the command line (the job image's entrypoint) for ``base``,
  ``icl`` and ``customized`` (a LoRA adapter saved by peft): every output written and consistent.
  The model is random, so only consistency is checked, never accuracy.
* Local generation: batching and the shared-prefix cache give exactly what plain ``generate`` gives.
* An endpoint (the local OpenAI-compatible server) with scripted answers: exact metrics, the judge,
  failing requests.
* Bad inputs: exit code 2 and ``error.json`` naming the problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flywheel.config import EndpointConfig, EvaluationConfig, GenerationConfig, ModelConfig
from flywheel.evaluate.examples import examples_hash, load_examples
from flywheel.evaluate.metrics import example_metrics, score_tool_calls
from flywheel.evaluate.parsing import parse_text
from flywheel.evaluate.runner import run_evaluation_job
from flywheel.jobs import EXIT_CONFIG, EXIT_FAILED

if TYPE_CHECKING:
    from openai_server import OpenAIServer

# The fixture; loading the module as a plugin (not importing it here) lets pytest rewrite its asserts.
pytest_plugins = ["openai_server"]

REASONS = {
    "invalid_json",
    "text_after_call",
    "not_a_call",
    "arguments_not_json",
    "arguments_not_object",
    "generation_failed",
}
METRICS = [m.name for m in example_metrics()]
"""The metrics every evaluation reports (the built-in per-example ones)."""
SCORE_OF = {
    "function_name_accuracy": "function_name",
    "function_name_and_args_accuracy": "function_name_and_args",
    "tool_call_ast_accuracy": "ast",
}

SYSTEM = {
    "role": "system",
    "content": "You are the customer-support assistant of Larkspur Goods, an online shop. Use the tools to "
    "look up orders, track shipments, start returns, search the catalog or hand the customer over to a "
    "human agent. Answer greetings and policy questions in one friendly sentence without a tool.",
}
ORDER_ID = {"type": "string", "description": "Order number, e.g. 'A-48213'.", "pattern": "^[A-Z]-[0-9]{5}$"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order_status",
            "description": "Look up an order.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": ORDER_ID, "include_items": {"type": "boolean", "default": False}},
                "required": ["order_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "track_shipment",
            "description": "Latest carrier scans of a package.",
            "parameters": {
                "type": "object",
                "properties": {
                    "tracking_number": {"type": "string"},
                    "carrier": {"type": "string", "enum": ["ups", "fedex", "usps", "dhl"]},
                },
                "required": ["tracking_number"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "start_return",
            "description": "Open a return for a delivered order.",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_id": ORDER_ID,
                    "reason": {"type": "string", "enum": ["damaged", "wrong_item", "changed_mind"]},
                },
                "required": ["order_id", "reason"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_products",
            "description": "Search the catalog.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "max_price": {"type": "number"}},
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "talk_to_human",
            "description": "Hand the conversation over to a human agent.",
            "parameters": {
                "type": "object",
                "properties": {"reason": {"type": "string"}},
                "required": ["reason"],
            },
        },
    },
]

GREETING = "Hi! I can help with orders, deliveries, returns and products. What can I do for you?"

# (record id, user request, reference calls as (name, arguments); none: a plain-text reference)
EVALUATION = [
    ("ex-01", "where is my order A-48213?", [("get_order_status", {"order_id": "A-48213"})]),
    (
        "ex-02",
        "can you track 1Z999AA10123456784 for me, it's ups",
        [("track_shipment", {"tracking_number": "1Z999AA10123456784", "carrier": "ups"})],
    ),
    ("ex-03", "hello there!", []),
    (
        "ex-04",
        "order B-10442 arrived broken, I want to send it back",
        [("start_return", {"order_id": "B-10442", "reason": "damaged"})],
    ),
    (
        "ex-05",
        "quick question: hair dryer under 75 bucks",
        [("search_products", {"query": "hair dryer", "max_price": 75})],
    ),
    (
        "ex-06",
        "status of A-11111 and where is parcel 1Z55 (dhl)?",
        [
            ("get_order_status", {"order_id": "A-11111"}),
            ("track_shipment", {"tracking_number": "1Z55", "carrier": "dhl"}),
        ],
    ),
    ("ex-07", "I want to talk to a manager right now", [("talk_to_human", {"reason": "wants a manager"})]),
]
TRAIN = [
    ("tr-01", "what's the status of C-20001?", [("get_order_status", {"order_id": "C-20001"})]),
    (
        "tr-02",
        "track 9400111899223 please (usps)",
        [("track_shipment", {"tracking_number": "9400111899223", "carrier": "usps"})],
    ),
    ("tr-03", "thanks, that's all!", []),
    (
        "tr-04",
        "the shoes from D-30303 don't fit, return them",
        [("start_return", {"order_id": "D-30303", "reason": "changed_mind"})],
    ),
    (
        "tr-05",
        "do you sell wool socks under 20?",
        [("search_products", {"query": "wool socks", "max_price": 20})],
    ),
    ("tr-06", "get me a real person", [("talk_to_human", {"reason": "asked for a person"})]),
    ("tr-07", "where is my order E-40404?", [("get_order_status", {"order_id": "E-40404"})]),
    ("tr-08", "good morning", []),
    (
        "tr-09",
        "hair straightener below 60",
        [("search_products", {"query": "hair straightener", "max_price": 60})],
    ),
    (
        "tr-10",
        "my package 1Z777 with fedex, where is it?",
        [("track_shipment", {"tracking_number": "1Z777", "carrier": "fedex"})],
    ),
]


def _openai_calls(calls: list[tuple[str, dict[str, Any]]], prefix: str) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        for i, (name, args) in enumerate(calls)
    ]


def _label(calls: list[tuple[str, dict[str, Any]]]) -> str:
    """The record's label as the dataset build writes it (the evaluation derives its own)."""
    return calls[0][0] if calls else "<no_tool>"


def write_dataset(root: Path) -> str:
    """A dataset directory shaped like the pipeline's: evaluation.jsonl and train.jsonl (router-like)."""
    root.mkdir(parents=True, exist_ok=True)
    evaluation = [
        {
            "record_id": record_id,
            "label": _label(calls),
            "messages": [SYSTEM, {"role": "user", "content": user}],
            "tools": TOOLS,
            "reference": {
                "tool_calls": [{"name": name, "arguments": args} for name, args in calls],
                "content": None if calls else GREETING,
            },
        }
        for record_id, user, calls in reversed(EVALUATION)  # the job sorts by id itself
    ]
    train = [
        {
            "record_id": record_id,
            "messages": [
                SYSTEM,
                {"role": "user", "content": user},
                {"role": "assistant", "content": None, "tool_calls": _openai_calls(calls, record_id)}
                if calls
                else {"role": "assistant", "content": "You're welcome! Anything else I can do?"},
            ],
            "tools": TOOLS,
        }
        for record_id, user, calls in TRAIN
    ]
    for name, records in (("evaluation", evaluation), ("train", train)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(root)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_dataset(tmp_path_factory.mktemp("eval-dataset") / "router")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def flywheel(*args: str) -> subprocess.CompletedProcess[str]:
    """``flywheel <args>`` as a process, the way a job pod runs it."""
    return subprocess.run(
        [sys.executable, "-m", "flywheel.cli", *args], capture_output=True, text=True, timeout=300
    )


# --- the tiny model through the command line ------------------------------------------------------

E2E_CONFIG = {
    "max_examples": 6,
    "generation": {"max_new_tokens": 12, "batch_size": 4},
    "icl": {"max_shots": 2, "token_budget": 200},
}


@pytest.fixture(scope="module")
def adapter(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A LoRA adapter of the tiny model saved by peft, with non-zero weights so that it changes answers."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flywheel.config import LoraSettings
    from flywheel.train.trainer import lora_config

    path = tmp_path_factory.mktemp("adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = get_peft_model(base, lora_config(LoraSettings(), base))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: the adapter would be the identity
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def cli_runs(
    dataset: str, tiny_model: str, adapter: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """``flywheel evaluate`` of the tiny model for base, icl and customized (run concurrently)."""
    root = tmp_path_factory.mktemp("cli-runs")
    config = root / "evaluation.yaml"
    config.write_text(json.dumps(E2E_CONFIG))  # JSON is YAML: the file form of --evaluation-config
    extra = {"base": [], "icl": [], "customized": ["--adapter", adapter, "--candidate-id", "tiny-lora"]}
    # Three processes share the machine: one intra-op thread each (torch's default of one per core
    # makes small matrix products spin-wait for each other, many times slower than one thread).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = {}
    started = time.perf_counter()
    for eval_type, more in extra.items():
        command = [
            sys.executable,
            "-m",
            "flywheel.cli",
            "evaluate",
            "--dataset",
            dataset,
            "--output",
            str(root / eval_type),
            "--eval-type",
            eval_type,
            "--base-model",
            tiny_model,
            "--evaluation-config",
            str(config),
            *more,
        ]
        processes[eval_type] = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
    runs = {}
    for eval_type, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{eval_type} failed:\n{stderr[-4000:]}"
        output = root / eval_type
        runs[eval_type] = {
            "output": output,
            "result": json.loads((output / "result.json").read_text()),
            "examples": read_jsonl(output / "examples.jsonl"),
            "log": stderr,
        }
    print(f"three CLI evaluations: {time.perf_counter() - started:.1f} s")
    return runs


@pytest.mark.parametrize("eval_type", ["base", "icl", "customized"])
def test_cli_writes_every_output(
    cli_runs: dict[str, dict[str, Any]], dataset: str, tiny_model: str, adapter: str, eval_type: str
) -> None:
    run = cli_runs[eval_type]
    output, result, lines = run["output"], run["result"], run["examples"]
    examples = load_examples(dataset, max_examples=6)
    by_id = {e.example_id: e for e in examples}
    train_ids = {record_id for record_id, _, _ in TRAIN}

    assert sorted(p.name for p in output.iterdir()) == ["examples.jsonl", "result.json"]
    assert [line["example_id"] for line in lines] == ["ex-01", "ex-02", "ex-03", "ex-04", "ex-05", "ex-06"]
    for line in lines:
        example = by_id[line["example_id"]]
        assert line["label"] == example.label
        assert isinstance(line["raw_output"], str)
        assert line["response_message"] is None  # a local model answers with text
        assert (line["tool_calls"] is None) == (line["parse_error"] is not None)
        if line["parse_error"] is not None:
            assert line["parse_error"].split(":")[0] in REASONS
        # What was recorded is what the raw output parses to and how it scores.
        parsed = parse_text(line["raw_output"])
        assert (line["tool_calls"], line["content"], line["parse_error"]) == (
            parsed.tool_calls,
            parsed.content,
            parsed.error,
        )
        raw = score_tool_calls(line["tool_calls"], example.reference_calls, example.tools)
        expected = {
            "function_name": raw["function_name"],
            "function_name_and_args": raw["exact"],
            "ast": raw["ast"],
        }
        if not example.reference_calls:
            expected["no_call"] = line["tool_calls"] == []
        assert line["scores"] == expected
        assert ("no_call" in line["scores"]) == (line["example_id"] == "ex-03")
        assert line["judge"] is None
        assert line["latency_s"] > 0
        assert line["tokens_in"] > 100  # system, tools and request
        assert 1 <= line["tokens_out"] <= 12
        # The random model rarely stops: cut by the cap of 12 tokens, or ended by a stop token.
        assert line["finish_reason"] in ("length", "stop")
        assert line["truncated"] == (line["finish_reason"] == "length")
        if eval_type == "icl":
            assert 1 <= len(line["icl_shots"]) <= 2
            assert set(line["icl_shots"]) <= train_ids
        else:
            assert line["icl_shots"] == []

    assert set(result["metrics"]) == set(METRICS)
    for name in METRICS:
        entry = result["metrics"][name]
        assert set(entry) == {"value", "ci_low", "ci_high", "n"}
        if name == "no_call_accuracy":
            flags = [line["scores"]["no_call"] for line in lines if "no_call" in line["scores"]]
        elif name == "parse_error_rate":
            flags = [line["tool_calls"] is None for line in lines]
        else:
            flags = [line["scores"][SCORE_OF[name]] for line in lines]
        assert entry["n"] == len(flags) == (1 if name == "no_call_accuracy" else 6)
        assert entry["value"] == pytest.approx(sum(flags) / len(flags))
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    labels = sorted({line["label"] for line in lines})
    assert sorted(result["per_tool"]) == labels
    assert sum(group["n"] for group in result["per_tool"].values()) == 6
    # The label is the first tool the reference calls (ex-01 and ex-06), or no_call (ex-03).
    assert result["per_tool"]["get_order_status"]["n"] == 2
    assert result["per_tool"]["no_call"]["n"] == 1
    assert result["truncated_examples"] == sum(line["truncated"] for line in lines)
    assert sum(group["truncated"] for group in result["per_tool"].values()) == result["truncated_examples"]
    assert result["answer_limits"]["max_new_tokens"] == 12
    assert result["answer_limits"]["max_new_tokens_setting"] == 12
    reasons = [line["parse_error"].split(":")[0] for line in lines if line["parse_error"]]
    assert result["parse_errors"] == {reason: reasons.count(reason) for reason in set(reasons)}
    assert result["tokens_in"] == sum(line["tokens_in"] for line in lines)
    assert result["tokens_out"] == sum(line["tokens_out"] for line in lines)
    assert 0 < result["latency_s"]["p50"] <= result["latency_s"]["p95"]
    assert "judge" not in result
    assert result["eval_type"] == eval_type
    assert result["examples"] == 6
    assert result["examples_hash"] == examples_hash(examples)
    assert result["generation_errors"] == 0
    assert result["examples_per_s"] > 0
    assert result["dataset"] == dataset
    assert result["examples_uri"] == str(output / "examples.jsonl")
    assert result["config"]["max_examples"] == 6
    assert result["config"]["generation"]["max_new_tokens"] == 12
    if eval_type == "customized":
        assert result["model"] == {"base_model": tiny_model, "adapter": adapter}
        assert result["candidate_id"] == "tiny-lora"
    else:
        assert result["model"] == {"base_model": tiny_model}
        assert result["candidate_id"] is None
    assert "evaluation finished" in run["log"]


def test_cli_eval_types_evaluate_the_same_examples(cli_runs: dict[str, dict[str, Any]]) -> None:
    base, icl, customized = (cli_runs[t] for t in ("base", "icl", "customized"))

    assert (
        base["result"]["examples_hash"]
        == icl["result"]["examples_hash"]
        == customized["result"]["examples_hash"]
    )
    ids = [[line["example_id"] for line in run["examples"]] for run in (base, icl, customized)]
    assert ids[0] == ids[1] == ids[2]
    # The shots lengthen every prompt; the adapter leaves the prompt alone but changes the answers.
    for plain, shots, adapted in zip(base["examples"], icl["examples"], customized["examples"], strict=True):
        assert shots["tokens_in"] > plain["tokens_in"]
        assert adapted["tokens_in"] == plain["tokens_in"]
    assert [line["raw_output"] for line in customized["examples"]] != [
        line["raw_output"] for line in base["examples"]
    ]


# --- local generation: batching and the prefix cache change nothing --------------------------------


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread while the test runs: on a small shared machine more only spin-wait."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.usefixtures("one_torch_thread")
def test_batching_and_prefix_cache_match_plain_generate(tiny_model: str, dataset: str) -> None:
    import torch

    from flywheel.evaluate.examples import load_train_examples
    from flywheel.evaluate.generation import Prompt
    from flywheel.evaluate.local import LocalGenerator

    prompts = [Prompt(e.messages, e.tools) for e in load_examples(dataset)]
    prompts.append(Prompt(load_train_examples(dataset)[0].messages[:-1], TOOLS))
    # float32: batched and single-row passes round alike only there (bf16 is measured, not asserted equal).
    generator = LocalGenerator(tiny_model, GenerationConfig(max_new_tokens=12, precision="float32"))
    # The tiny model's initialisation answers every prompt with the same newlines; larger random weights
    # make each answer depend on its prompt, so that a row mixed up with another one would show.
    seeded = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in generator.model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=seeded) * 0.2)
    ids = [generator.encode(p) for p in prompts]
    assert len(ids) == 8
    assert len({tuple(i[:150]) for i in ids}) == 1  # the system + tools prefix is shared

    def run(batch_size: int, prefix_cache: bool) -> list[tuple[str, int]]:
        generator.generation = GenerationConfig(
            max_new_tokens=12, batch_size=batch_size, prefix_cache=prefix_cache, precision="float32"
        )
        return [(g.text, g.tokens_out) for g in generator.generate(prompts)]

    def plain_generate() -> list[list[int]]:
        """Each prompt alone through transformers' own greedy ``generate`` (the new tokens)."""
        answers = []
        with torch.inference_mode():
            for prompt_ids in ids:
                out = generator.model.generate(
                    torch.tensor([prompt_ids]),
                    attention_mask=torch.ones((1, len(prompt_ids)), dtype=torch.long),
                    max_new_tokens=12,
                    do_sample=False,
                    eos_token_id=generator.stop_ids,
                    pad_token_id=generator.stop_ids[0],
                )
                answers.append(out[0, len(prompt_ids) :].tolist())
        return answers

    free = plain_generate()
    assert len({tuple(tokens) for tokens in free}) == len(ids)  # every answer is its own
    # A random model rarely stops on its own: tokens that only one answer produces (the 3rd of the
    # first answer, the 6th of the fourth) are made stop tokens too, so rows leave a batch at different
    # steps while the others go on.
    for row, position in ((0, 2), (3, 5)):
        token = free[row][position]
        assert sum(token in tokens for tokens in free) == 1
        generator.stop_ids = [*generator.stop_ids, token]
    reference = []
    for tokens in plain_generate():
        stopped = bool(tokens) and tokens[-1] in generator.stop_ids
        reference.append((generator.tokenizer.decode(tokens[:-1] if stopped else tokens), len(tokens)))
    assert [n for _, n in reference].count(12) == len(ids) - 2

    computed_before = generator.prefix_tokens_computed
    results = {(b, c): run(b, c) for b in (4, 1) for c in (True, False)}
    for key, texts in results.items():
        assert texts == reference, key
    assert generator.prefix_tokens_computed > computed_before


# --- an endpoint: scripted answers, exact metrics, the judge --------------------------------------


def _call(name: str, arguments: Any) -> dict[str, Any]:
    return {"function": {"name": name, "arguments": arguments}}


# What the served model answers per request, and how each answer must score.
ANSWERS: dict[str, dict[str, Any]] = {
    "where is my order A-48213?": {"tool_calls": [_call("get_order_status", {"order_id": "A-48213"})]},
    # the right tool, a wrong carrier
    "can you track 1Z999AA10123456784 for me, it's ups": {
        "tool_calls": [
            _call("track_shipment", '{"tracking_number": "1Z999AA10123456784", "carrier": "fedex"}')
        ]
    },
    "hello there!": {"content": "Hello! How can I help you today?"},
    # cut-off arguments
    "order B-10442 arrived broken, I want to send it back": {
        "tool_calls": [_call("start_return", '{"order_id": "B-10442", "reason": ')]
    },
    # equal after BFCL's string standardisation only
    "quick question: hair dryer under 75 bucks": {
        "tool_calls": [_call("search_products", {"query": "Hair Dryer", "max_price": 75})]
    },
    # both calls, in the other order
    "status of A-11111 and where is parcel 1Z55 (dhl)?": {
        "tool_calls": [
            _call("track_shipment", {"tracking_number": "1Z55", "carrier": "dhl"}),
            _call("get_order_status", {"order_id": "A-11111"}),
        ]
    },
    "I want to talk to a manager right now": {"content": "Sorry, I cannot do that."},
}
# example id: (function_name, function_name_and_args, ast)
EXPECTED_SCORES = {
    "ex-01": (True, True, True),
    "ex-02": (True, False, False),
    "ex-03": (True, True, True),
    "ex-04": (False, False, False),
    "ex-05": (True, False, True),
    "ex-06": (True, True, True),
    "ex-07": (False, False, False),
}


def answer(body: dict[str, Any]) -> dict[str, Any]:
    return ANSWERS[body["messages"][-1]["content"]]


def served(server: OpenAIServer, **overrides: Any) -> EndpointConfig:
    settings = {
        "base_url": server.base_url,
        "model": server.model,
        "concurrency": 3,
        "timeout_s": 10.0,
        "max_retries": 0,
        "retry_backoff_s": 0.01,
    }
    return EndpointConfig(**{**settings, **overrides})


def evaluate(
    dataset: str, output: Path, endpoint: EndpointConfig, eval_type: str = "base", **config: Any
) -> tuple[int, dict[str, Any] | None, list[dict[str, Any]]]:
    """Run the job in-process; the exit code, result.json (None when absent) and examples.jsonl."""
    settings = EvaluationConfig.model_validate({"generation": {"max_new_tokens": 64}, **config})
    code = run_evaluation_job(dataset, ModelConfig(endpoint=endpoint), eval_type, settings, str(output))
    result = json.loads((output / "result.json").read_text()) if (output / "result.json").exists() else None
    lines = read_jsonl(output / "examples.jsonl") if (output / "examples.jsonl").exists() else []
    return code, result, lines


@pytest.mark.parametrize("precision", ["auto", "float32", "bfloat16"])
def test_local_generation_runs_in_the_precision_asked_for(tiny_model: str, precision: str) -> None:
    # auto: bf16 where the CPU has bf16 instructions (as training's autocast there), else float32.
    import torch

    from flywheel.evaluate.generation import Prompt
    from flywheel.evaluate.local import LocalGenerator
    from flywheel.train.trainer import cpu_has_bf16

    expected = {
        "auto": torch.bfloat16 if cpu_has_bf16() else torch.float32,
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
    }[precision]

    generator = LocalGenerator(tiny_model, GenerationConfig(max_new_tokens=4, precision=precision))

    assert {p.dtype for p in generator.model.parameters()} == {expected}
    (answer,) = generator.generate([Prompt([{"role": "user", "content": "Where is my order?"}], TOOLS)])
    assert answer.tokens_out > 0


def test_endpoint_metrics_are_the_expected_fractions(
    openai_server: OpenAIServer, dataset: str, tmp_path: Path
) -> None:
    openai_server.responder = answer

    code, result, lines = evaluate(dataset, tmp_path / "out", served(openai_server))

    assert code == 0
    scores = {line["example_id"]: line["scores"] for line in lines}
    for example_id, (name, exact, ast) in EXPECTED_SCORES.items():
        got = scores[example_id]
        assert (got["function_name"], got["function_name_and_args"], got["ast"]) == (name, exact, ast), (
            example_id
        )
    assert scores["ex-03"]["no_call"] is True
    metrics = {name: entry["value"] for name, entry in result["metrics"].items()}
    assert metrics == {
        "function_name_accuracy": 5 / 7,
        "function_name_and_args_accuracy": 3 / 7,
        "tool_call_ast_accuracy": 4 / 7,
        "no_call_accuracy": 1.0,
        "parse_error_rate": 1 / 7,
    }
    assert result["metrics"]["no_call_accuracy"]["n"] == 1
    assert result["parse_errors"] == {"arguments_not_json": 1}
    by_id = {line["example_id"]: line for line in lines}
    assert by_id["ex-04"]["tool_calls"] is None
    assert by_id["ex-04"]["parse_error"].startswith("arguments_not_json: call 1")
    assert by_id["ex-07"]["tool_calls"] == []
    assert by_id["ex-07"]["content"] == "Sorry, I cannot do that."
    assert by_id["ex-01"]["response_message"]["tool_calls"][0]["function"]["name"] == "get_order_status"
    assert by_id["ex-01"]["tokens_in"] > 0  # the server's usage
    assert result["per_tool"]["search_products"] == {
        "n": 1,
        "function_name_accuracy": 1.0,
        "function_name_and_args_accuracy": 0.0,
        "tool_call_ast_accuracy": 1.0,
        "parse_error_rate": 0.0,
        "truncated": 0,
    }
    assert result["model"]["endpoint"]["model"] == "served-model"
    assert result["examples"] == 7

    bodies = openai_server.bodies()
    assert len(bodies) == 7
    for body in bodies:
        assert body["model"] == "served-model"
        assert body["tools"] == TOOLS
        assert body["tool_choice"] == "auto"
        assert body["max_tokens"] == 64
        assert body["temperature"] == 0
        assert [m["role"] for m in body["messages"]] == ["system", "user"]


def test_a_metric_of_your_own_is_scored_and_reported(
    openai_server: OpenAIServer, dataset: str, tmp_path: Path
) -> None:
    """A metric named by its dotted path (docs/examples/my_flywheel/metrics.py) is scored like a built-in."""
    openai_server.responder = answer

    code, result, lines = evaluate(
        dataset, tmp_path / "out", served(openai_server), metrics=["my_flywheel.metrics:OfferedToolsOnly"]
    )

    assert code == 0
    # Every answer calls only offered tools, or none; ex-04's cut-off arguments make it unreadable.
    assert {line["example_id"]: line["scores"]["offered_tools_only"] for line in lines} == {
        "ex-01": True,
        "ex-02": True,
        "ex-03": True,
        "ex-04": False,
        "ex-05": True,
        "ex-06": True,
        "ex-07": True,
    }
    assert result["metrics"]["offered_tools_only"]["value"] == 6 / 7
    assert result["metrics"]["offered_tools_only"]["n"] == 7
    assert set(result["metrics"]) == {*METRICS, "offered_tools_only"}
    assert result["per_tool"]["start_return"]["offered_tools_only"] == 0.0
    assert result["per_tool"]["search_products"]["offered_tools_only"] == 1.0
    assert result["config"]["metrics"] == ["my_flywheel.metrics:OfferedToolsOnly"]


def test_judge_ratings_and_missing_ones(openai_server: OpenAIServer, dataset: str, tmp_path: Path) -> None:
    from openai_server import OpenAIServer as Server

    openai_server.responder = answer
    replies = {
        "ex-01": "The call matches the reference.\nRating: 10",
        "ex-02": "Wrong carrier.\nRating: 7",
        "ex-03": "A fine greeting.\nRating: 10",
        "ex-04": "I am not sure what to make of this.",  # no rating in it
        "ex-05": "Same query, different case.\nRating: 7",
        "ex-06": None,  # the request fails with 400
        "ex-07": "Text instead of the call.\nRating: 0",  # a real zero, not a missing rating
    }
    users = {record_id: user for record_id, user, _ in EVALUATION}

    def judge(body: dict[str, Any]) -> dict[str, Any]:
        case = body["messages"][1]["content"]
        (example_id,) = [i for i, user in users.items() if f"user: {user}" in case]
        return {"content": replies[example_id]}

    with Server("judge-model") as judge_server:
        judge_server.responder = judge
        # One judge request at a time, in example order: the sixth gets the 400.
        judge_server.faults.extend([{}] * 5 + [{"status": 400, "message": "context too long"}])
        config = {"judge": {"endpoint": served(judge_server, concurrency=1).model_dump(), "max_tokens": 32}}

        code, result, lines = evaluate(dataset, tmp_path / "out", served(openai_server), **config)

    assert not judge_server.errors
    assert code == 0
    assert len(judge_server.requests) == 7
    judged = {line["example_id"]: line["judge"] for line in lines}
    assert {i: j["rating"] for i, j in judged.items()} == {
        "ex-01": 10.0,
        "ex-02": 7.0,
        "ex-03": 10.0,
        "ex-04": None,
        "ex-05": 7.0,
        "ex-06": None,
        "ex-07": 0.0,
    }
    assert judged["ex-03"]["rubric"] == "generic"
    assert {j["rubric"] for i, j in judged.items() if i != "ex-03"} == {"tool_call"}
    assert "no 0-10 rating" in judged["ex-04"]["error"]
    assert "judge request failed" in judged["ex-06"]["error"]
    assert "HTTP 400" in judged["ex-06"]["error"]
    assert all(j["error"] is None for i, j in judged.items() if i not in ("ex-04", "ex-06"))
    summary = result["judge"]
    assert summary["rated"] == 5
    assert summary["missing"] == 2
    assert summary["mean"] == pytest.approx(34 / 5)
    assert summary["ci_low"] < summary["mean"] < summary["ci_high"]
    # The judge saw the parsed answer of each example.
    cases = {b["messages"][1]["content"] for b in judge_server.bodies() if isinstance(b, dict)}
    assert any('"carrier": "fedex"' in case for case in cases)
    assert all(b["model"] == "judge-model" for b in judge_server.bodies())


def test_icl_through_an_endpoint_with_a_tokenizer(
    openai_server: OpenAIServer, dataset: str, tiny_model: str, tmp_path: Path
) -> None:
    openai_server.responder = answer

    code, result, lines = evaluate(
        dataset,
        tmp_path / "out",
        served(openai_server),
        "icl",
        icl={"max_shots": 2, "token_budget": 300, "tokenizer": tiny_model},
    )

    assert code == 0
    assert result["eval_type"] == "icl"
    train_ids = {record_id for record_id, _, _ in TRAIN}
    for line in lines:
        assert 1 <= len(line["icl_shots"]) <= 2
        assert set(line["icl_shots"]) <= train_ids
    for body in openai_server.bodies():
        roles = [m["role"] for m in body["messages"]]
        assert roles[0] == "system"
        assert roles[-1] == "user"
        assert "assistant" in roles  # the shots' answers, sent as earlier turns
        for message in body["messages"]:
            for call in message.get("tool_calls") or []:
                json.loads(call["function"]["arguments"])  # JSON text on the wire


# --- requests that keep failing ------------------------------------------------------------------


def test_an_endpoint_that_always_fails_fails_the_job_retryably(
    openai_server: OpenAIServer, dataset: str, tmp_path: Path
) -> None:
    openai_server.faults.extend([{"status": 503}] * 7)
    output = tmp_path / "out"

    code, result, lines = evaluate(dataset, output, served(openai_server))

    assert code == EXIT_FAILED
    assert result is None
    error = json.loads((output / "error.json").read_text())
    assert error["error"] == "GenerationErrorsError"
    assert error["exit_code"] == EXIT_FAILED
    assert error["retryable"] is True
    assert "7 of 7 examples got no answer" in error["message"]
    assert "HTTP 503" in error["message"]
    assert len(lines) == 7  # the per-example outcomes are kept for diagnosis
    assert all(line["parse_error"].startswith("generation_failed: ") for line in lines)
    assert len(openai_server.requests) == 7  # max_retries 0


def test_generation_errors_within_the_allowed_rate_score_as_failures(
    openai_server: OpenAIServer, dataset: str, tmp_path: Path
) -> None:
    openai_server.faults.extend([{"status": 503}] * 7)

    code, result, lines = evaluate(
        dataset, tmp_path / "out", served(openai_server), max_generation_error_rate=1.0
    )

    assert code == 0
    assert result["generation_errors"] == 7
    assert result["parse_errors"] == {"generation_failed": 7}
    metrics = {name: entry["value"] for name, entry in result["metrics"].items()}
    assert metrics == {
        "function_name_accuracy": 0.0,
        "function_name_and_args_accuracy": 0.0,
        "tool_call_ast_accuracy": 0.0,
        "no_call_accuracy": 0.0,  # no answer is not a correct "no call"
        "parse_error_rate": 1.0,
    }
    for line in lines:
        assert line["tool_calls"] is None
        assert line["raw_output"] is None
        assert line["tokens_in"] == line["tokens_out"] == 0
        assert not any(line["scores"].values())


# --- bad inputs: exit code 2 and error.json ------------------------------------------------------


def test_missing_dataset_exits_2_and_clears_the_previous_attempt(tiny_model: str, tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "result.json").write_text('{"stale": true}')
    (output / "examples.jsonl").write_text("{}\n")

    process = flywheel(
        "evaluate", "--dataset", str(tmp_path / "missing"), "--output", str(output),
        "--eval-type", "base", "--base-model", tiny_model,
    )  # fmt: skip

    assert process.returncode == EXIT_CONFIG, process.stderr
    assert sorted(p.name for p in output.iterdir()) == ["error.json"]
    error = json.loads((output / "error.json").read_text())
    assert error["error"] == "JobInputError"
    assert error["retryable"] is False
    assert error["exit_code"] == EXIT_CONFIG
    assert f"{tmp_path / 'missing' / 'evaluation.jsonl'} does not exist" in error["message"]


def test_customized_without_adapter_exits_2(dataset: str, tiny_model: str, tmp_path: Path) -> None:
    output = tmp_path / "out"

    process = flywheel(
        "evaluate", "--dataset", dataset, "--output", str(output), "--eval-type", "customized",
        "--base-model", tiny_model,
    )  # fmt: skip

    assert process.returncode == EXIT_CONFIG, process.stderr
    error = json.loads((output / "error.json").read_text())
    assert error["error"] == "ConfigError"
    assert "--adapter" in error["message"]
    assert not (output / "result.json").exists()


def test_a_bad_evaluation_config_key_exits_2_naming_it(dataset: str, tiny_model: str, tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "result.json").write_text('{"stale": true}')

    process = flywheel(
        "evaluate", "--dataset", dataset, "--output", str(output), "--eval-type", "base",
        "--base-model", tiny_model, "--evaluation-config", '{"generation": {"max_new_token": 12}}',
    )  # fmt: skip

    assert process.returncode == EXIT_CONFIG
    assert "max_new_token" in process.stderr
    assert sorted(p.name for p in output.iterdir()) == ["error.json"]
    error = json.loads((output / "error.json").read_text())
    assert error["error"] == "ConfigError"
    assert "generation.max_new_token" in error["message"]
    assert "--evaluation-config" in error["message"]


def test_icl_through_an_endpoint_needs_a_tokenizer(dataset: str, tmp_path: Path) -> None:
    output = tmp_path / "out"
    endpoint = json.dumps({"base_url": "http://127.0.0.1:9/v1", "model": "served-model"})

    process = flywheel(
        "evaluate", "--dataset", dataset, "--output", str(output), "--eval-type", "icl",
        "--endpoint", endpoint,
    )  # fmt: skip

    assert process.returncode == EXIT_CONFIG, process.stderr
    error = json.loads((output / "error.json").read_text())
    assert error["error"] == "ConfigError"
    assert "icl.tokenizer" in error["message"]
    assert not (output / "examples.jsonl").exists()


# --- SmolLM2-135M on router examples (slow) -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_smollm2_base_evaluation_writes_every_output(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from flywheel.config import load_config
    from flywheel.dataset.build import build_dataset
    from flywheel.demo.seed import write_raw_partition
    from flywheel.storage import ArtifactStore
    from flywheel.train.models import SMOLLM2
    from flywheel.validate.day import validate_day

    # One day of demo router traffic through the pipeline.
    start = datetime(2026, 11, 20, 2, tzinfo=UTC)
    workload = load_config().workload("customer_support_router")
    store = ArtifactStore(str(tmp_path / "artifacts"))
    write_raw_partition(store, workload, start=start, end=start + timedelta(days=1), count=200, seed=4)
    validate_day(
        store,
        workload_id=workload.workload_id,
        start=start,
        end=start + timedelta(days=1),
        rules=workload.data_quality,
        build_docs=False,
    )
    # A small day puts its whole evaluation bucket in the golden set, which the manifest names.
    dataset = build_dataset(store, workload, start.date()).uri
    output = tmp_path / "out"
    config = EvaluationConfig.model_validate(
        {"max_examples": 8, "generation": {"max_new_tokens": 48, "batch_size": 4}}
    )

    started = time.perf_counter()
    code = run_evaluation_job(str(dataset), ModelConfig(base_model=SMOLLM2), "base", config, str(output))
    print(f"SmolLM2-135M base evaluation of 8 examples: {time.perf_counter() - started:.1f} s")

    assert code == 0, (output / "error.json").read_text() if (output / "error.json").exists() else ""
    result = json.loads((output / "result.json").read_text())
    lines = read_jsonl(output / "examples.jsonl")
    assert len(lines) == result["examples"] == 8
    assert set(result["metrics"]) == set(METRICS)
    for name in METRICS:
        assert result["metrics"][name]["n"] == (
            sum("no_call" in line["scores"] for line in lines) if name == "no_call_accuracy" else 8
        )
    for line in lines:
        assert line["raw_output"] is not None
        assert line["tokens_in"] > 500  # the router's system prompt and seven tool schemas
        assert 1 <= line["tokens_out"] <= 48
        assert (line["tool_calls"] is None) == (line["parse_error"] is not None)
    assert result["model"] == {"base_model": SMOLLM2}
    assert result["examples_hash"] == examples_hash(load_examples(dataset, max_examples=8))
    assert result["examples_per_set"] == {"golden": 8}
    print(json.dumps({name: entry["value"] for name, entry in result["metrics"].items()}))
