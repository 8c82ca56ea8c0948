"""The examples a run evaluates (``evaluation.jsonl``) and the few-shot pool (``train.jsonl``).

Every model of a run reads the same dataset file and keeps the same examples (sorted by example id, the
first ``max_examples``), so their per-example outcomes can be paired. :func:`examples_hash` fingerprints
that selection; the evaluation summary records it and the comparison checks it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from flywheel import artifacts
from flywheel.jobs import JobInputError, read_jsonl
from flywheel.storage import storage_options_from_env
from flywheel.train.sampling import label_of_calls


class EvaluationInputError(JobInputError):
    """The dataset cannot be evaluated as given (no examples, a record that is not an example)."""


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
    """The per-label breakdown's key, :func:`~flywheel.train.sampling.label_of_calls` of the reference
    calls: the first tool called, or ``no_call`` (training balances on the same label)."""
    eval_set: str = "evaluation"
    """``evaluation`` (the dataset's evaluation split) or ``golden`` (the workload's frozen golden set)."""


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


def load_examples(
    dataset_uri: str, *, max_examples: int | None = None, include_golden: bool = True
) -> list[EvalExample]:
    """The examples a run evaluates, sorted by example id, the first ``max_examples``.

    They are the dataset's evaluation split and, with ``include_golden``, the workload's frozen golden
    set that the dataset's manifest names (chosen once from held-out records, so it is never trained
    on either), less the golden examples the manifest lists as ``stale`` (they offer a retired tool).
    Each example says which of the two it comes from (``eval_set``).
    """
    sources = [("evaluation", _split_uri(dataset_uri, "evaluation"))]
    golden = _golden(dataset_uri) if include_golden else None
    stale: set[str] = set()
    if golden:
        sources.append(("golden", golden["uri"]))
        stale = set(golden.get("stale") or [])
    examples: dict[str, EvalExample] = {}
    for eval_set, uri in sources:
        for where, record in read_jsonl(uri):
            example = _example(where, record, eval_set)
            if eval_set == "golden" and example.example_id in stale:
                continue  # it offers a retired tool (data_quality.retired_tools: exclude)
            examples.setdefault(example.example_id, example)
    if not examples:
        names = " and ".join(uri for _, uri in sources)
        raise EvaluationInputError(f"{names}: no evaluation examples")
    ordered = sorted(examples.values(), key=lambda e: e.example_id)
    return ordered[:max_examples] if max_examples else ordered


def _example(where: str, record: dict[str, Any], eval_set: str) -> EvalExample:
    try:
        reference = record["reference"]
        calls = [openai_call(call, i) for i, call in enumerate(reference.get("tool_calls") or [])]
        return EvalExample(
            example_id=str(record["record_id"]),
            messages=list(record["messages"]),
            tools=list(record.get("tools") or []),
            reference_calls=calls,
            reference_content=reference.get("content"),
            label=label_of_calls(calls),
            eval_set=eval_set,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise EvaluationInputError(f"{where}: not an evaluation example ({problem})") from None


def _golden(dataset_uri: str) -> dict[str, Any] | None:
    """The dataset's ``manifest.json`` entry of the golden set: its ``uri`` and the ids of its ``stale``
    examples (None without a manifest or golden set)."""
    import fsspec

    try:
        with fsspec.open(artifacts.manifest_uri(dataset_uri), "rb", **storage_options_from_env()) as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        return None
    golden = manifest.get("golden") if isinstance(manifest, dict) else None
    return golden if isinstance(golden, dict) and golden.get("uri") else None


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


def _split_uri(dataset_uri: str, split: str) -> str:
    return artifacts.split_uri(dataset_uri, split)
