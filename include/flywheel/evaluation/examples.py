"""The examples a run evaluates (``evaluation.jsonl``) and the few-shot pool (``train.jsonl``).

Every model of a run reads the same dataset file and keeps the same examples (sorted by example id, the
first ``max_examples``), so their per-example outcomes can be paired. :func:`examples_hash` fingerprints
that selection; the evaluation summary records it and the comparison checks it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from flywheel.jobs import JobInputError, read_jsonl


class EvaluationInputError(JobInputError):
    """The dataset cannot be evaluated as given (missing file, a record that is not an example)."""


@dataclass(frozen=True)
class EvalExample:
    """One evaluation example: the prompt, the tools offered and the reference answer."""

    example_id: str
    messages: list[dict[str, Any]]
    """The conversation up to the answer (system, user, earlier turns)."""
    tools: list[dict[str, Any]]
    reference_calls: list[dict[str, Any]]
    """The reference answer's OpenAI ``tool_calls`` (``[]`` when the right answer calls no tool)."""
    reference_content: str | None
    label: str
    """The reference's tool names joined by ``+``, or ``<no_tool>``: the per-tool breakdown's key."""


@dataclass(frozen=True)
class TrainExample:
    """One training-split example, a candidate few-shot example: the conversation ends with the answer."""

    example_id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]

    @property
    def answer(self) -> dict[str, Any]:
        """The final assistant message."""
        return self.messages[-1]

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools the answer calls, in order."""
        return [call.get("function", call).get("name", "") for call in self.answer.get("tool_calls") or []]


def load_examples(dataset_uri: str, *, max_examples: int | None = None) -> list[EvalExample]:
    """The evaluation examples of a dataset, sorted by example id, the first ``max_examples``."""
    examples = []
    for where, record in read_jsonl(_split_uri(dataset_uri, "evaluation")):
        try:
            reference = record["reference"]
            calls = [openai_call(call, i) for i, call in enumerate(reference.get("tool_calls") or [])]
            examples.append(
                EvalExample(
                    example_id=str(record["record_id"]),
                    messages=list(record["messages"]),
                    tools=list(record.get("tools") or []),
                    reference_calls=calls,
                    reference_content=reference.get("content"),
                    label=record.get("label") or label_of(calls),
                )
            )
        except (KeyError, TypeError, AttributeError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            raise EvaluationInputError(f"{where}: not an evaluation example ({problem})") from None
    examples.sort(key=lambda e: e.example_id)
    if not examples:
        raise EvaluationInputError(f"{_split_uri(dataset_uri, 'evaluation')} has no examples")
    return examples[:max_examples] if max_examples else examples


def load_train_examples(dataset_uri: str, *, limit: int | None = None) -> list[TrainExample]:
    """Training-split examples ending with an assistant answer (sorted by id, the first ``limit``)."""
    pool = []
    for where, record in read_jsonl(_split_uri(dataset_uri, "train")):
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages or messages[-1].get("role") != "assistant":
            raise EvaluationInputError(f"{where}: a training example must end with the assistant answer")
        pool.append(
            TrainExample(
                example_id=str(record.get("record_id", where)),
                messages=messages,
                tools=list(record.get("tools") or []),
            )
        )
    pool.sort(key=lambda e: e.example_id)
    return pool[:limit] if limit else pool


def examples_hash(examples: list[EvalExample]) -> str:
    """A fingerprint of which examples were evaluated (their ids, in order)."""
    digest = hashlib.sha256("\n".join(e.example_id for e in examples).encode())
    return digest.hexdigest()[:16]


def openai_call(call: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """A tool call as an OpenAI ``tool_calls`` entry (``arguments`` as JSON text).

    Accepts the dataset's reference form ``{"name", "arguments"}`` or an OpenAI entry already.
    """
    function = call.get("function", call)
    arguments = function.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {
        "id": call.get("id") or f"call_{index}",
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def label_of(calls: list[dict[str, Any]]) -> str:
    """``+``-joined called tool names, or ``<no_tool>``."""
    names = [call.get("function", call).get("name", "") for call in calls]
    return "+".join(names) if names else "<no_tool>"


def _split_uri(dataset_uri: str, split: str) -> str:
    return posixpath.join(dataset_uri.rstrip("/"), f"{split}.jsonl")
