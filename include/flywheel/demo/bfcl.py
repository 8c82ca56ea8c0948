"""Demo workload (b): traffic drawn from the Berkeley Function Calling Leaderboard v4 *live* data.

BFCL's live categories are user-contributed requests against real-world functions, with ground-truth
calls written by the BFCL authors: data that nobody on this project wrote. :func:`derive_sample` turns
the upstream files into a small stratified sample in OpenAI form, shipped with the package as
``flywheel/demo/data/bfcl_live_sample.jsonl`` (Apache-2.0, see ``data/NOTICE``); :func:`load_sample`
reads it back and :func:`make_conversation` turns its rows into clean teacher conversations for
:func:`flywheel.demo.traffic.generate_traffic`.

Conversion from the BFCL dialect:

* types ``dict`` -> ``object``, ``float`` -> ``number``, ``tuple`` -> ``array``; ``any`` loses its
  ``type`` key; recursively through ``properties`` and ``items``;
* function names with dots (``uber.ride``) become valid OpenAI names (``uber_ride``), in tools and calls;
* each ground-truth parameter takes its first acceptable value other than ``""``; a parameter whose
  only acceptable value is ``""`` (may be omitted) is left out;
* only the first turn of ``question`` is kept; ``live_irrelevance`` rows get no call (the right answer).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import random
import re
from pathlib import Path
from typing import Any

import orjson

from flywheel.demo.conversation import Conversation, arguments_json, estimate_tokens

CATEGORIES = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance")
"""BFCL v4 live categories in the sample; ``live_irrelevance`` rows have no correct call."""

DEFAULT_PER_CATEGORY = {
    "live_simple": 160,
    "live_multiple": 115,
    "live_parallel": 16,
    "live_parallel_multiple": 24,
    "live_irrelevance": 95,
}
"""Rows sampled per category for the packaged file (fewer when a category has fewer usable rows)."""

SAMPLE_RESOURCE = "data/bfcl_live_sample.jsonl"
"""The packaged sample, relative to the ``flywheel.demo`` package."""

SYSTEM_PROMPT = (
    "You are a helpful assistant with access to the functions below. When a function can do what the "
    "user asks, call it with arguments taken from the request; call several when the request needs "
    "several. If none of the functions applies, say so briefly and do not call any."
)

OPENAI_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
"""Function names OpenAI-compatible servers accept."""

_TYPE_MAP = {"dict": "object", "float": "number", "tuple": "array"}

_NO_TOOL_ANSWERS = (
    "I'm sorry, but none of the functions I have access to can help with that request.",
    "I can't do that with the tools available to me. Is there something else I can help with?",
    "None of the available functions applies to this request, so I can't act on it.",
)


def openai_name(name: str) -> str:
    """The OpenAI-valid form of a BFCL function name (dots become underscores, as BFCL does for OpenAI)."""
    converted = name.replace(".", "_")
    if not OPENAI_NAME.match(converted):
        raise ValueError(f"BFCL function name {name!r} has no valid OpenAI form ({converted!r})")
    return converted


def convert_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A BFCL parameter schema in JSON-schema terms (types mapped, ``any`` untyped), recursively."""
    converted: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            if value != "any":
                converted["type"] = _TYPE_MAP.get(value, value)
        elif key == "properties" and isinstance(value, dict):
            converted["properties"] = {name: convert_schema(sub) for name, sub in value.items()}
        elif key == "items" and isinstance(value, dict):
            converted["items"] = convert_schema(value)
        else:
            converted[key] = value
    return converted


def convert_function(function: dict[str, Any]) -> dict[str, Any]:
    """One BFCL function definition as an OpenAI ``tools`` entry."""
    return {
        "type": "function",
        "function": {
            "name": openai_name(function["name"]),
            "description": function.get("description", ""),
            "parameters": convert_schema(function.get("parameters") or {"type": "dict", "properties": {}}),
        },
    }


def _first_acceptable(acceptable: list[Any]) -> tuple[bool, Any]:
    """(found, value): the first acceptable value other than ``""``; found is False when only ``""``."""
    for value in acceptable:
        if value != "":
            return True, value
    return False, None


def _resolve_dict(answer: dict[str, Any]) -> dict[str, Any]:
    """A dict-typed parameter's answer, ``{key: [acceptable values]}``, resolved to one dict."""
    resolved = {}
    for key, acceptable in answer.items():
        found, value = _first_acceptable(acceptable) if isinstance(acceptable, list) else (True, acceptable)
        if found:
            resolved[key] = value
    return resolved


def _resolve_value(value: Any, schema: dict[str, Any]) -> Any:
    """One acceptable value of a top-level parameter, as BFCL's checker reads it.

    For a ``dict`` parameter the value is itself ``{key: [acceptable values]}``; for an array of
    ``dict`` items it is a list of such dicts. Deeper levels and other types are literal values.
    """
    declared = schema.get("type")
    if declared == "dict" and isinstance(value, dict):
        return _resolve_dict(value)
    items = schema.get("items")
    item_type = items.get("type") if isinstance(items, dict) else None
    if declared in ("array", "tuple") and item_type == "dict" and isinstance(value, list):
        return [_resolve_dict(item) if isinstance(item, dict) else item for item in value]
    return value


def ground_truth_calls(
    ground_truth: list[dict[str, dict[str, list[Any]]]], functions: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """BFCL ground truth as ``[{"name", "arguments"}]``: first acceptable value of each parameter.

    `functions` are the row's BFCL function definitions (their schemas tell how to read ``dict``
    parameters). A ``""`` among the acceptable values means the parameter may be omitted: it is
    skipped when choosing, and the parameter is left out when ``""`` is its only acceptable value.
    """
    schemas = {
        function["name"]: (function.get("parameters") or {}).get("properties", {}) for function in functions
    }
    calls = []
    for call in ground_truth:
        ((name, parameters),) = call.items()
        properties = schemas.get(name, {})
        arguments = {}
        for parameter, acceptable in parameters.items():
            found, value = _first_acceptable(acceptable)
            if found:
                arguments[parameter] = _resolve_value(value, properties.get(parameter, {}))
        calls.append({"name": openai_name(name), "arguments": arguments})
    return calls


def convert_row(category: str, row: dict[str, Any], answer: dict[str, Any] | None) -> dict[str, Any]:
    """One BFCL line (and its possible-answer line, ``None`` for irrelevance) as a sample row."""
    tools = [convert_function(function) for function in row["function"]]
    names = [tool["function"]["name"] for tool in tools]
    if len(set(names)) != len(names):
        raise ValueError(f"{row['id']}: function names collide after conversion: {sorted(names)}")
    calls = ground_truth_calls(answer["ground_truth"], row["function"]) if answer is not None else []
    return {
        "bfcl_id": row["id"],
        "category": category,
        "messages": [{"role": m["role"], "content": m["content"]} for m in row["question"][0]],
        "tools": tools,
        "tool_calls": calls,
    }


def _schema_fits(value: Any, schema: dict[str, Any]) -> bool:
    """Whether `value` keeps to `schema`'s enum, and, for objects with declared properties, to their
    required keys, declared keys and nested schemas (recursively, also through array items)."""
    if "enum" in schema and value not in schema["enum"]:
        return False
    properties = schema.get("properties")
    if isinstance(value, dict) and isinstance(properties, dict):
        if any(required not in value for required in schema.get("required", ())):
            return False
        for key, item in value.items():
            if key not in properties or not _schema_fits(item, properties[key]):
                return False
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, dict):
        return all(_schema_fits(item, items) for item in value)
    return True


def calls_fit_tools(row: dict[str, Any]) -> bool:
    """Whether a sample row's calls are valid against its own tools.

    Each call must name a tool, give every required parameter, use only declared parameters and keep
    to their ``enum`` values, recursively through objects and array items. Some BFCL answers do not
    (``None`` for an enum, ``"N/A"`` for a unit): such rows would teach the student calls its tools
    reject.
    """
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in row["tools"]}
    return all(
        call["name"] in schemas and _schema_fits(call["arguments"], schemas[call["name"]])
        for call in row["tool_calls"]
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders ``live_simple_10-3-0`` after ``live_simple_9-2-0``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text))


def derive_sample(
    bfcl_dir: Path, out_path: Path, per_category: dict[str, int] | None = None, seed: int = 0
) -> int:
    """Write the stratified OpenAI-form sample of BFCL v4 live data to `out_path`; return its row count.

    `bfcl_dir` holds ``BFCL_v4_<category>.json`` and ``possible_answer/BFCL_v4_<category>.json``
    (JSON lines). Rows whose answer does not fit their own tools (:func:`calls_fit_tools`) are left
    out; from the rest, each category draws ``per_category[category]`` rows (default
    :data:`DEFAULT_PER_CATEGORY`, all rows when fewer remain) with a generator seeded by `seed` and
    the category, over rows sorted by id. The output is JSON lines with sorted keys, ordered by
    category then id, so the same input and arguments always give the same bytes.
    """
    counts = DEFAULT_PER_CATEGORY if per_category is None else per_category
    unknown = sorted(set(counts) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown BFCL live categories {unknown}; expected some of {CATEGORIES}")
    lines = []
    for category in CATEGORIES:
        wanted = counts.get(category, 0)
        if wanted <= 0:
            continue
        rows = _read_jsonl(bfcl_dir / f"BFCL_v4_{category}.json")
        answers: dict[str, dict[str, Any]] = {}
        if category != "live_irrelevance":
            answers = {
                a["id"]: a for a in _read_jsonl(bfcl_dir / "possible_answer" / f"BFCL_v4_{category}.json")
            }
            missing = [row["id"] for row in rows if row["id"] not in answers]
            if missing:
                raise ValueError(f"{category}: no possible answer for {missing[:5]} ({len(missing)} rows)")
        converted = [convert_row(category, row, answers.get(row["id"])) for row in rows]
        usable = sorted(
            (row for row in converted if calls_fit_tools(row)), key=lambda r: _natural_key(r["bfcl_id"])
        )
        sampler = random.Random(f"bfcl-live-sample:{seed}:{category}")  # nosec B311 # reproducible, not secret
        chosen = sampler.sample(usable, min(wanted, len(usable)))
        chosen.sort(key=lambda r: _natural_key(r["bfcl_id"]))
        lines.extend(json.dumps(r, sort_keys=True, ensure_ascii=False, separators=(",", ":")) for r in chosen)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
    return len(lines)


@functools.cache
def load_sample() -> tuple[dict[str, Any], ...]:
    """The packaged BFCL live sample (read once, then cached; treat the rows as read-only)."""
    text = importlib.resources.files("flywheel.demo").joinpath(SAMPLE_RESOURCE).read_text(encoding="utf-8")
    return tuple(orjson.loads(line) for line in text.splitlines() if line)


class _Prepared:
    """A sample row ready for generation: its tool list, token estimate and answer as JSON text."""

    __slots__ = ("messages", "tool_calls", "tools", "tools_tokens")

    def __init__(self, row: dict[str, Any]) -> None:
        messages = row["messages"]
        has_system = bool(messages) and messages[0]["role"] == "system"
        pairs = [(m["role"], m["content"]) for m in messages]
        self.messages = pairs if has_system else [("system", SYSTEM_PROMPT), *pairs]
        self.tools: list[dict[str, Any]] = row["tools"]
        self.tools_tokens = estimate_tokens(orjson.dumps(self.tools).decode())
        self.tool_calls = [(call["name"], arguments_json(call["arguments"])) for call in row["tool_calls"]]


@functools.cache
def _prepared() -> tuple[_Prepared, ...]:
    return tuple(_Prepared(row) for row in load_sample())


def make_conversation(rng: random.Random) -> Conversation:
    """One clean conversation: a sample row with the app's system prompt and the teacher's answer.

    The teacher answers with the row's ground-truth calls, or, for irrelevance rows, in plain text.
    A row whose question already starts with a system message keeps it instead of the default prompt.
    """
    row = rng.choice(_prepared())
    messages = [{"role": role, "content": content} for role, content in row.messages]
    if row.tool_calls:
        return Conversation(messages, row.tools, row.tools_tokens, row.tool_calls, None)
    return Conversation(messages, row.tools, row.tools_tokens, [], rng.choice(_NO_TOOL_ANSWERS))
