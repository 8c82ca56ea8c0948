"""The evaluation job (``flywheel evaluate``): one model, one eval type, one dataset, scored outputs.

The job answers every evaluation example with the model (local transformers generation, or an
OpenAI-compatible endpoint), optionally with few-shot examples from the training split (``icl``),
parses each answer into tool calls, scores it once on each metric (the built-ins of
:mod:`flywheel.evaluate.metrics` and the workload's own), has an optional LLM judge rate it, and writes
under the output URI:

* ``examples.jsonl``: one line per example: id, label, raw output, parsed calls, parse error, each
  score, the judge's rating, latency, tokens in and out, why the answer ended and whether the token
  cap cut it (``truncated``), the few-shot example ids;
* ``result.json`` (written last, the completion marker): each metric's value with its 95% interval and
  count (the share of the per-example scores), a per-label breakdown (``per_tool``), the answers cut
  by the token cap (``truncated_examples``) and the cap itself (``answer_limits``,
  :mod:`flywheel.evaluate.limits`), latency and token figures, the model, the eval type and the
  fingerprint of the evaluated examples.

A truncated answer is scored on what it says, like any other: cut off, it is almost always unreadable
and so wrong; it is counted apart so that "cut off" can be told from "wrong".

A failure writes ``error.json`` instead, with the exit code of :mod:`flywheel.jobs`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from flywheel import artifacts
from flywheel.config import EvalType, EvaluationConfig, ModelConfig
from flywheel.errors import ConfigError, RetryableError
from flywheel.evaluate.examples import EvalExample, examples_hash, load_examples, load_train_examples
from flywheel.evaluate.generation import Generation, Generator, Prompt
from flywheel.evaluate.limits import answer_limits
from flywheel.evaluate.metrics import ExampleMetric, example_metrics, get_metric
from flywheel.evaluate.parsing import ParsedAnswer, parse_generation
from flywheel.evaluate.stats import mean_interval, percentile, proportion
from flywheel.jobs import run_job, write_result
from flywheel.storage import storage_options_from_env

log = logging.getLogger(__name__)

JOB_OUTPUTS = (artifacts.EXAMPLES,)
"""What an evaluation job writes under its output URI besides ``result.json`` / ``error.json``."""


class GenerationErrorsError(RetryableError):
    """Too many examples got no answer at all (the endpoint kept failing): the evaluation is not usable."""


@dataclass
class ScoredExample:
    """One evaluated example: the answer, how it parsed, its scores and what it cost."""

    example: EvalExample
    generation: Generation
    parsed: ParsedAnswer
    scores: dict[ExampleMetric, bool]
    """The example's score on each metric that applies to it."""
    shots: list[str]
    judge: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """The ``examples.jsonl`` line."""
        return {
            "example_id": self.example.example_id,
            "eval_set": self.example.eval_set,
            "label": self.example.label,
            "raw_output": self.generation.text,
            "response_message": self.generation.message,
            "tool_calls": self.parsed.tool_calls,
            "content": self.parsed.content,
            "parse_error": self.parsed.error,
            "scores": {m.score_key: v for m, v in self.scores.items() if m.score_key is not None},
            "judge": self.judge,
            "latency_s": self.generation.latency_s,
            "tokens_in": self.generation.tokens_in,
            "tokens_out": self.generation.tokens_out,
            "finish_reason": self.generation.finish_reason,
            "truncated": self.generation.truncated,
            "icl_shots": self.shots,
        }


def run_evaluation_job(
    dataset_uri: str,
    model: ModelConfig,
    eval_type: EvalType,
    config: EvaluationConfig,
    output_uri: str,
    *,
    candidate_id: str | None = None,
) -> int:
    """Evaluate and publish the outputs; on failure publish ``error.json``. Returns the exit code."""

    def body() -> None:
        result = evaluate_model(dataset_uri, model, eval_type, config, output_uri, candidate_id=candidate_id)
        log.info("evaluation finished: %s", json.dumps(headline(result)))

    return run_job(output_uri, JOB_OUTPUTS, body, what="evaluation")


def evaluate_model(
    dataset_uri: str,
    model: ModelConfig,
    eval_type: EvalType,
    config: EvaluationConfig,
    output_uri: str,
    *,
    candidate_id: str | None = None,
) -> dict[str, Any]:
    """Answer, parse, score and judge the dataset's evaluation examples; write and return the summary."""
    started = time.perf_counter()
    if eval_type == "customized" and model.adapter is None:
        raise ConfigError("eval type 'customized' needs --adapter (the candidate's fine-tuned adapter)")
    examples = load_examples(
        dataset_uri, max_examples=config.max_examples, include_golden=config.include_golden
    )
    log.info("evaluating %s (%s): %d examples of %s", describe(model), eval_type, len(examples), dataset_uri)
    generator, tokenizer = _generator(model, config)
    try:
        limits = answer_limits(config.generation, examples, tokenizer)
        shots = _shots(eval_type, examples, dataset_uri, config, tokenizer, model)
        prompts = [Prompt(_with_shots(e.messages, s), e.tools) for e, s in zip(examples, shots, strict=True)]
        generation_started = time.perf_counter()
        generations = generator.generate(prompts, limits.limits)
        generation_seconds = time.perf_counter() - generation_started
    finally:
        close = getattr(generator, "close", None)
        if close is not None:
            close()
    metrics = example_metrics(config.metrics)
    scored = [
        _score(example, generation, [s.example_id for s in example_shots], metrics)
        for example, generation, example_shots in zip(examples, generations, shots, strict=True)
    ]
    failed = sum(s.generation.error is not None for s in scored)
    if failed / len(scored) > config.max_generation_error_rate:
        _write_examples(output_uri, scored)  # the evidence, next to error.json
        raise GenerationErrorsError(
            f"{failed} of {len(scored)} examples got no answer (max_generation_error_rate "
            f"{config.max_generation_error_rate}); first error: "
            f"{next(s.generation.error for s in scored if s.generation.error)}"
        )
    if config.judge is not None:
        _judge(scored, config)
    _write_examples(output_uri, scored)
    result = summarize(scored, metrics)
    result |= {
        "eval_type": eval_type,
        "candidate_id": candidate_id,
        "model": model.model_dump(
            mode="json", exclude_none=True, exclude=None if model.few_shot else {"few_shot"}
        ),
        "dataset": dataset_uri,
        "examples": len(scored),
        "examples_per_set": _count(e.eval_set for e in examples),
        "examples_hash": examples_hash(examples),
        "generation_errors": failed,
        "answer_limits": limits.record(config.generation),
        "generation_seconds": round(generation_seconds, 2),
        "examples_per_s": round(len(scored) / generation_seconds, 4) if generation_seconds else None,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "config": config.model_dump(mode="json"),
        "examples_uri": artifacts.job_uri(output_uri, artifacts.EXAMPLES),
    }
    return write_result(output_uri, result, dataset_uri=dataset_uri)


def summarize(scored: list[ScoredExample], metrics: list[ExampleMetric]) -> dict[str, Any]:
    """Each metric with its 95% interval and count, per-label breakdown, truncated answers, latency,
    tokens and judge."""
    summary_metrics = {m.name: proportion(_flags(scored, m)) for m in metrics}
    latencies = [s.generation.latency_s for s in scored]
    summary: dict[str, Any] = {
        "metrics": summary_metrics,
        "per_tool": _per_tool(scored, [m for m in metrics if m.per_tool]),
        "truncated_examples": sum(s.generation.truncated for s in scored),
        "parse_errors": _count(s.parsed.reason for s in scored if s.parsed.reason),
        "latency_s": {
            "mean": round(sum(latencies) / len(latencies), 4),
            "p50": round(percentile(latencies, 50) or 0, 4),
            "p95": get_metric("latency_p95_s").aggregate(latencies),
        },
        "tokens_in": sum(s.generation.tokens_in for s in scored),
        "tokens_out": sum(s.generation.tokens_out for s in scored),
    }
    ratings = [s.judge["rating"] for s in scored if s.judge and s.judge.get("rating") is not None]
    if any(s.judge is not None for s in scored):
        interval = mean_interval(ratings)
        summary["judge"] = {
            "mean": round(sum(ratings) / len(ratings), 4) if ratings else None,
            "ci_low": round(interval[0], 4) if interval else None,
            "ci_high": round(interval[1], 4) if interval else None,
            "rated": len(ratings),
            "missing": sum(1 for s in scored if s.judge is not None and s.judge.get("rating") is None),
        }
    return summary


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The few figures a log line or an XCom carries: each metric's value, examples, examples/s, the
    answers the token cap cut."""
    return {
        "eval_type": result["eval_type"],
        "candidate_id": result.get("candidate_id"),
        "examples": result["examples"],
        "examples_per_s": result.get("examples_per_s"),
        "truncated_examples": result.get("truncated_examples"),
        **{name: entry["value"] for name, entry in result["metrics"].items()},
    }


def describe(model: ModelConfig) -> str:
    """A short, secret-free name of the model for logs."""
    if model.endpoint is not None:
        return f"{model.endpoint.model} at {model.endpoint.base_url}"
    shots = " with few-shot examples" if model.few_shot else ""
    return f"{model.base_model}" + (f" + adapter {model.adapter}" if model.adapter else "") + shots


def _flags(scored: list[ScoredExample], metric: ExampleMetric) -> list[bool]:
    """The scores of the examples ``metric`` applies to."""
    return [s.scores[metric] for s in scored if metric in s.scores]


def _per_tool(scored: list[ScoredExample], metrics: list[ExampleMetric]) -> dict[str, dict[str, Any]]:
    """Per example label (the reference's first tool, or ``<no_tool>``): the examples, each metric's
    value over them and how many answers the token cap cut."""
    groups: dict[str, list[ScoredExample]] = defaultdict(list)
    for s in scored:
        groups[s.example.label].append(s)
    return {
        label: {
            "n": len(group),
            **{m.name: proportion(_flags(group, m))["value"] for m in metrics},
            "truncated": sum(s.generation.truncated for s in group),
        }
        for label, group in sorted(groups.items())
    }


def _score(
    example: EvalExample, generation: Generation, shots: list[str], metrics: list[ExampleMetric]
) -> ScoredExample:
    """Parse the answer and score it once on each metric that applies to the example."""
    parsed = parse_generation(generation)
    reference, tools = example.reference_calls, example.tools
    scores = {m: m.score(parsed.tool_calls, reference, tools) for m in metrics if m.applies(reference)}
    return ScoredExample(example, generation, parsed, scores, shots)


def _judge(scored: list[ScoredExample], config: EvaluationConfig) -> None:
    from flywheel.evaluate.judge import Judge

    assert config.judge is not None
    answers = [
        {"tool_calls": s.parsed.tool_calls, "content": s.parsed.content, "raw": s.generation.text}
        for s in scored
    ]
    with Judge(config.judge) as judge:
        ratings = judge.rate([s.example for s in scored], answers)
    for s, rating in zip(scored, ratings, strict=True):
        s.judge = {"rating": rating.rating, "rubric": rating.rubric, "error": rating.error}


def _generator(model: ModelConfig, config: EvaluationConfig) -> tuple[Generator, Any]:
    """The backend that answers, and the tokenizer that counts few-shot tokens (None for endpoints)."""
    if model.endpoint is not None:
        from flywheel.evaluate.endpoint import EndpointGenerator

        return EndpointGenerator(model.endpoint, config.generation), None
    from flywheel.evaluate.local import LocalGenerator

    assert model.base_model is not None
    generator = LocalGenerator(
        model.base_model, config.generation, adapter=model.adapter, storage_options=storage_options_from_env()
    )
    return generator, generator.tokenizer


def _shots(
    eval_type: EvalType,
    examples: list[EvalExample],
    dataset_uri: str,
    config: EvaluationConfig,
    tokenizer: Any,
    model: ModelConfig,
) -> list[list[Any]]:
    """Few-shot examples per evaluation example: chosen from the training split for ``icl`` (and a
    ``few_shot`` model, such as a champion promoted from an icl variant), else none."""
    if eval_type != "icl" and not model.few_shot:
        return [[] for _ in examples]
    from flywheel.evaluate.icl import ShotSelector
    from flywheel.train.models import load_tokenizer, resolve_base_model

    if tokenizer is None:
        if not config.icl.tokenizer:
            raise ConfigError(
                f"icl.tokenizer: required to evaluate {describe(model)} with ICL (an endpoint has no local "
                "tokenizer to count the few-shot token budget with)"
            )
        tokenizer = load_tokenizer(resolve_base_model(config.icl.tokenizer))
    pool = load_train_examples(dataset_uri, limit=config.icl.pool_size)
    selector = ShotSelector(pool, tokenizer, config.icl)
    shots = [selector.select(example) for example in examples]
    used = [selector.shot_tokens(s) for s in shots]
    log.info(
        "ICL: %d pool examples, %.1f shots and %.0f shot tokens per example on average",
        len(pool),
        sum(map(len, shots)) / len(shots),
        sum(used) / len(used),
    )
    return shots


def _with_shots(messages: list[dict[str, Any]], shots: list[Any]) -> list[dict[str, Any]]:
    from flywheel.evaluate.icl import with_shots

    return with_shots(messages, shots) if shots else messages


def _write_examples(output_uri: str, scored: list[ScoredExample]) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(output_uri, **storage_options_from_env())
    fs.makedirs(root, exist_ok=True)
    lines = [json.dumps(s.record(), ensure_ascii=False, default=str) for s in scored]
    fs.pipe_file(artifacts.job_uri(root, artifacts.EXAMPLES), ("\n".join(lines) + "\n").encode())


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for value in values:
        counts[value] += 1
    return dict(sorted(counts.items()))
