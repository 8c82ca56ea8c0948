"""Tests for flywheel.evaluate.metrics.scoring on real BFCL v4 rows and on OpenAI-form references."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flywheel.evaluate.metrics import bfcl_tools, score_tool_calls, standardize_string

BFCL_DIR = Path("/work/shared/datasets/bfcl_v4")
CATEGORIES = [
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
]
ROWS_PER_CATEGORY = 40
ALL_TRUE = {"function_name": True, "exact": True, "ast": True}
ALL_FALSE = {"function_name": False, "exact": False, "ast": False}

pytestmark = pytest.mark.skipif(not BFCL_DIR.is_dir(), reason="BFCL v4 data set not available")


def _load(category: str) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """A fixed-seed sample of a BFCL category's rows paired with their possible answers."""
    answers: dict[str, list[dict[str, Any]]] = {}
    with open(BFCL_DIR / "possible_answer" / f"BFCL_v4_{category}.json") as fh:
        for line in fh:
            record = json.loads(line)
            answers[record["id"]] = record["ground_truth"]
    rows = []
    with open(BFCL_DIR / f"BFCL_v4_{category}.json") as fh:
        for line in fh:
            row = json.loads(line)
            rows.append((row, answers[row["id"]]))
    return random.Random(f"bfcl-{category}").sample(rows, min(ROWS_PER_CATEGORY, len(rows)))


def _first(value: Any) -> Any:
    """Resolve a BFCL candidate into a concrete value, taking the first acceptable value at each level."""
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        return {k: _first(v[0]) for k, v in value.items() if v and v[0] != ""}
    if isinstance(value, list):
        return [_first(v) for v in value]
    return value


def _ground_truth_calls(
    ground_truth: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[tuple[str, dict[str, Any]]] | None:
    """Concrete calls from possible answers: first acceptable value per parameter, skipping omittable ones.

    BFCL's answers are not always consistent with the schemas, and we work around that as BFCL's checker
    would judge it: an omittable parameter the schema does not declare (``type`` in parallel_multiple_26)
    is skipped, a required parameter whose first acceptable value is ``""`` (simple_python_200) takes its
    first non-empty value, and a row with a required parameter that has no usable value at all
    (live_simple_106-63-0, live_multiple_507-149-4) or with a mandatory parameter the schema does not
    declare (live_multiple_862-181-3) gives ``None`` (BFCL's checker cannot pass such rows either).
    """
    schemas = _schemas(tools)
    calls = []
    for answer in ground_truth:
        ((name, params),) = answer.items()
        properties = schemas[name].get("properties", {})
        required = set(schemas[name].get("required", []))
        args = {}
        for param, acceptable in params.items():
            usable = [v for v in acceptable if v != ""]
            if (param in required and not usable) or (param not in properties and "" not in acceptable):
                return None
            if (
                usable
                and (acceptable[0] != "" or param in required)
                and (param in properties or "" not in acceptable)
            ):
                args[param] = _first(usable[0])
        calls.append((name, args))
    return calls


def _openai(calls: list[tuple[str, dict[str, Any]]], as_text: bool = True) -> list[dict[str, Any]]:
    """Render (name, arguments) pairs as OpenAI tool calls (arguments as JSON text or a dict)."""
    return [
        {"type": "function", "function": {"name": n, "arguments": json.dumps(a) if as_text else a}}
        for n, a in calls
    ]


def _schemas(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Function name to normalised parameter schema."""
    return {t["function"]["name"]: t["function"]["parameters"] for t in tools}


def _wrong_type_value(value: Any, schema: dict[str, Any]) -> Any:
    """A value of a type the schema does not accept (None when the schema accepts anything)."""
    kind = schema.get("type")
    return (
        {
            "string": 12345,
            "integer": "12345",
            "number": "1.5",
            "boolean": "yes",
            "array": "not a list",
            "object": "not a dict",
        }.get(kind)
        if isinstance(kind, str)
        else None
    )


@pytest.fixture(scope="module")
def dataset() -> dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]]:
    """Sampled rows of every category."""
    return {category: _load(category) for category in CATEGORIES}


@pytest.mark.parametrize("category", CATEGORIES)
def test_ground_truth_scores_true(dataset: dict[str, Any], category: str) -> None:
    """Ground truth built from the first acceptable values scores True on all three metrics."""
    for row, ground_truth in dataset[category]:
        tools = bfcl_tools(row["function"])
        calls = _ground_truth_calls(ground_truth, tools)
        if calls is None:
            continue
        assert score_tool_calls(_openai(calls), ground_truth, tools) == ALL_TRUE, row["id"]
        assert score_tool_calls(_openai(calls, as_text=False), ground_truth, tools) == ALL_TRUE, row["id"]


def test_perturbations(dataset: dict[str, Any]) -> None:
    """Targeted perturbations of the ground truth give the expected scores."""
    rng = random.Random(1234)
    applied: Counter[str] = Counter()
    for category in CATEGORIES:
        for row, ground_truth in dataset[category]:
            tools = bfcl_tools(row["function"])
            schemas = _schemas(tools)
            calls = _ground_truth_calls(ground_truth, tools)
            if calls is None:
                continue
            idx = rng.randrange(len(calls))
            name, args = calls[idx]
            schema = schemas[name]
            acceptable = ground_truth[idx][name]

            def score(
                new_args: dict[str, Any], ctx: tuple[Any, ...] = (idx, calls, ground_truth, tools)
            ) -> dict[str, bool]:
                """Score the ground truth with one call's arguments replaced by ``new_args``."""
                call_idx, base_calls, answers, request_tools = ctx
                changed = [*base_calls]
                changed[call_idx] = (changed[call_idx][0], new_args)
                return score_tool_calls(_openai(changed), answers, request_tools)

            scalar = [
                p for p, v in args.items() if isinstance(v, str | int | float) and not isinstance(v, bool)
            ]
            if scalar:
                param = rng.choice(scalar)
                value = args[param]
                wrong = f"zzqx {value}" if isinstance(value, str) else value + 98765
                result = score({**args, param: wrong})
                assert result == {"function_name": True, "exact": False, "ast": False}, (row["id"], param)
                applied["wrong_value"] += 1

            required = [p for p in schema.get("required", []) if p in args]
            if required:
                param = rng.choice(required)
                assert not score({k: v for k, v in args.items() if k != param})["ast"], (row["id"], param)
                applied["missing_required"] += 1

            result = score({**args, "zz_unexpected_param": 1})
            assert not result["ast"], row["id"]
            assert result["function_name"], row["id"]
            applied["extra_param"] += 1

            typed = [p for p in args if _wrong_type_value(args[p], schema["properties"][p]) is not None]
            if typed:
                param = rng.choice(typed)
                wrong = _wrong_type_value(args[param], schema["properties"][param])
                assert not score({**args, param: wrong})["ast"], (row["id"], param)
                applied["wrong_type"] += 1

            cased = [
                p
                for p, v in args.items()
                if schema["properties"][p].get("type") == "string"
                and isinstance(v, str)
                and v.swapcase() != v
                and v.swapcase() not in acceptable[p]
            ]
            if cased:
                param = rng.choice(cased)
                result = score({**args, param: args[param].swapcase()})
                assert standardize_string(args[param].swapcase()) == standardize_string(args[param])
                assert result == {"function_name": True, "exact": False, "ast": True}, (row["id"], param)
                applied["case_change"] += 1

            if len(calls) > 1:
                swapped = _openai(calls[::-1])
                assert score_tool_calls(swapped, ground_truth, tools) == ALL_TRUE, row["id"]
                applied["swapped_order"] += 1

            duplicated = _openai([*calls, calls[idx]])
            assert not score_tool_calls(duplicated, ground_truth, tools)["function_name"], row["id"]
            applied["duplicated_call"] += 1

    for kind in ("wrong_value", "missing_required", "extra_param", "wrong_type", "case_change"):
        assert applied[kind] >= 100, applied
    assert applied["swapped_order"] >= 50, applied
    assert applied["duplicated_call"] >= 0.95 * sum(len(rows) for rows in dataset.values())


# ----------------------------------------------------------------------------- OpenAI-form references

WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "dict",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer", "default": 1},
                    "threshold": {"type": "float"},
                    "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]


def _call(name: str, arguments: Any) -> dict[str, Any]:
    """One OpenAI tool call without the optional ``type`` key."""
    return {"function": {"name": name, "arguments": arguments}}


def test_openai_numbers_compare_by_value() -> None:
    """1 and 1.0 are the same argument value."""
    reference = [_call("get_weather", {"city": "Paris", "threshold": 1.0})]
    predicted = [_call("get_weather", '{"city": "Paris", "threshold": 1}')]
    assert score_tool_calls(predicted, reference, WEATHER_TOOLS) == ALL_TRUE


@pytest.mark.parametrize("form", ["bfcl", "openai"])
def test_a_float_with_a_zero_fraction_is_not_an_integer(form: str) -> None:
    """BFCL's type rule: ``10.0`` for an ``integer`` parameter fails AST (and exact); ``10`` passes."""
    if form == "bfcl":
        reference: list[Any] = [{"get_weather": {"city": ["Paris"], "days": [10], "threshold": ["", 1.0]}}]
    else:
        reference = [_call("get_weather", {"city": "Paris", "days": 10})]
    score = {
        days: score_tool_calls(
            [_call("get_weather", f'{{"city": "Paris", "days": {days}}}')], reference, WEATHER_TOOLS
        )
        for days in ("10", "10.0", "1e1")
    }
    assert score["10"] == ALL_TRUE
    assert score["10.0"] == score["1e1"] == {"function_name": True, "exact": False, "ast": False}
    # An int still stands for a number (BFCL's ``float``): 1 for 1.0.
    predicted = [_call("get_weather", '{"city": "Paris", "days": 10, "threshold": 1}')]
    assert (
        score_tool_calls(
            predicted, [_call("get_weather", {"city": "Paris", "days": 10, "threshold": 1.0})], WEATHER_TOOLS
        )
        == ALL_TRUE
    )


def test_a_float_answer_for_an_integer_parameter_still_accepts_that_float() -> None:
    """BFCL's "variable" rule: a value of an undeclared type passes when it is the answer, of its type."""
    reference = [{"get_weather": {"city": ["Paris"], "days": [2.5]}}]
    assert (
        score_tool_calls([_call("get_weather", {"city": "Paris", "days": 2.5})], reference, WEATHER_TOOLS)
        == ALL_TRUE
    )
    reference = [{"get_weather": {"city": ["Paris"], "days": [10.0]}}]
    assert (
        score_tool_calls([_call("get_weather", {"city": "Paris", "days": 10})], reference, WEATHER_TOOLS)
        == ALL_TRUE
    )


def test_openai_omitted_argument_equals_default() -> None:
    """An omitted argument equals the schema's declared default, in either direction."""
    reference = [_call("get_weather", '{"city": "Paris", "unit": "c"}')]
    assert score_tool_calls([_call("get_weather", {"city": "Paris"})], reference, WEATHER_TOOLS) == ALL_TRUE
    reference = [_call("get_weather", {"city": "Paris"})]
    predicted = [_call("get_weather", {"city": "Paris", "days": 1})]
    assert score_tool_calls(predicted, reference, WEATHER_TOOLS) == ALL_TRUE
    predicted = [_call("get_weather", {"city": "Paris", "days": 2})]
    assert score_tool_calls(predicted, reference, WEATHER_TOOLS) == {
        "function_name": True,
        "exact": False,
        "ast": False,
    }


@pytest.mark.parametrize("arguments", ['{"city": "Paris"', "[1, 2]", "null", "42", '"Paris"'])
def test_openai_malformed_arguments_score_false(arguments: str) -> None:
    """Arguments that are not a JSON object make every score False."""
    reference = [_call("get_weather", {"city": "Paris"})]
    assert score_tool_calls([_call("get_weather", arguments)], reference, WEATHER_TOOLS) == ALL_FALSE


def test_openai_parallel_and_case() -> None:
    """Parallel calls match order-free; a case change passes AST but not exact."""
    reference = [_call("get_weather", {"city": "Paris"}), _call("get_time", {})]
    predicted = [_call("get_time", "{}"), _call("get_weather", {"city": "paris"})]
    assert score_tool_calls(predicted, reference, WEATHER_TOOLS) == {
        "function_name": True,
        "exact": False,
        "ast": True,
    }
    predicted = [_call("get_time", ""), _call("get_weather", {"city": "Paris"})]
    assert score_tool_calls(predicted, reference, WEATHER_TOOLS) == ALL_TRUE
    assert not score_tool_calls(predicted[:1], reference, WEATHER_TOOLS)["function_name"]


def test_bad_inputs_never_raise() -> None:
    """Garbage inputs score False rather than raising."""
    reference = [_call("get_weather", {"city": "Paris"})]
    for predicted in (None, "x", [1], [{"function": None}], [{"function": {"name": 3}}]):
        assert score_tool_calls(predicted, reference, WEATHER_TOOLS) == ALL_FALSE
    assert score_tool_calls([_call("get_weather", {"city": "Paris"})], "nope", None) == ALL_FALSE
