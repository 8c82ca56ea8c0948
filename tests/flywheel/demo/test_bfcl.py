"""Tests of the BFCL live workload: conversion, the packaged sample and traffic drawn from it."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from flywheel.demo import bfcl
from flywheel.demo.traffic import generate_traffic

BFCL_DIR = Path(os.environ.get("FLYWHEEL_BFCL_DIR", "/work/shared/datasets/bfcl_v4"))
OPENAI_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
BFCL_TYPES = {"dict", "float", "tuple", "any"}

# A hand-written BFCL line: dotted name, every dialect type, nested dict answers, optional "" values.
ROW = {
    "id": "live_simple_7-3-0",
    "question": [
        [
            {"role": "system", "content": "Answer briefly."},
            {
                "role": "user",
                "content": "Comfort ride from 2020 Addison St, 2.5 km, quiet please, stop at 1.5",
            },
        ],
        [{"role": "user", "content": "a second turn that is dropped"}],
    ],
    "function": [
        {
            "name": "uber.ride",
            "description": "Find a ride.",
            "parameters": {
                "type": "dict",
                "required": ["loc", "type"],
                "properties": {
                    "loc": {"type": "string", "description": "Start address."},
                    "type": {"type": "string", "enum": ["plus", "comfort", "black"]},
                    "distance": {"type": "float", "default": 1.0},
                    "stops": {
                        "type": "tuple",
                        "items": {
                            "type": "dict",
                            "properties": {"lat": {"type": "float"}, "tag": {"type": "any"}},
                        },
                    },
                    "meta": {"type": "any", "description": "Anything."},
                    "prefs": {
                        "type": "dict",
                        "properties": {"quiet": {"type": "boolean"}, "temp": {"type": "float"}},
                    },
                    "note": {"type": "string", "default": ""},
                },
            },
        },
        {"name": "weather.get", "description": "Weather.", "parameters": {"type": "dict", "properties": {}}},
    ],
}
ANSWER = {
    "id": "live_simple_7-3-0",
    "ground_truth": [
        {
            "uber.ride": {
                "loc": ["2020 Addison St", "2020 Addison Street"],
                "type": ["comfort"],
                "distance": ["", 2.5],
                "note": [""],
                "prefs": [{"quiet": ["", True], "temp": [""]}],
                "stops": [[{"lat": [1.5], "tag": ["x", "y"]}]],
            }
        }
    ],
}


def test_convert_row_maps_the_bfcl_dialect() -> None:
    row = bfcl.convert_row("live_simple", ROW, ANSWER)
    assert row["bfcl_id"] == "live_simple_7-3-0"
    assert row["category"] == "live_simple"
    assert row["messages"] == ROW["question"][0]
    ride, weather = row["tools"]
    assert weather["function"]["name"] == "weather_get"
    assert ride["type"] == "function"
    assert ride["function"]["name"] == "uber_ride"
    assert ride["function"]["parameters"] == {
        "type": "object",
        "required": ["loc", "type"],
        "properties": {
            "loc": {"type": "string", "description": "Start address."},
            "type": {"type": "string", "enum": ["plus", "comfort", "black"]},
            "distance": {"type": "number", "default": 1.0},
            "stops": {
                "type": "array",
                "items": {"type": "object", "properties": {"lat": {"type": "number"}, "tag": {}}},
            },
            "meta": {"description": "Anything."},
            "prefs": {
                "type": "object",
                "properties": {"quiet": {"type": "boolean"}, "temp": {"type": "number"}},
            },
            "note": {"type": "string", "default": ""},
        },
    }
    assert row["tool_calls"] == [
        {
            "name": "uber_ride",
            "arguments": {
                "loc": "2020 Addison St",
                "type": "comfort",
                "distance": 2.5,
                "prefs": {"quiet": True},
                "stops": [{"lat": 1.5, "tag": "x"}],
            },
        }
    ]
    assert bfcl.calls_fit_tools(row)
    assert bfcl.convert_row("live_irrelevance", ROW, None)["tool_calls"] == []


def test_calls_fit_tools_rejects_answers_the_schema_forbids() -> None:
    row = bfcl.convert_row("live_simple", ROW, ANSWER)
    arguments = row["tool_calls"][0]["arguments"]
    for broken in ({**arguments, "type": None}, {"loc": "x"}, {**arguments, "speed": 3}):
        row["tool_calls"][0]["arguments"] = broken
        assert not bfcl.calls_fit_tools(row), broken
    row["tool_calls"][0] = {"name": "uber.ride", "arguments": arguments}
    assert not bfcl.calls_fit_tools(row)


def test_invalid_names_are_refused() -> None:
    with pytest.raises(ValueError, match="no valid OpenAI form"):
        bfcl.openai_name("get weather!")


def write_bfcl_dir(root: Path) -> None:
    """A small BFCL-shaped directory: 6 simple rows (one with an answer outside its enum), 4 irrelevance."""
    (root / "possible_answer").mkdir(parents=True)
    simple, answers = [], []
    for i in range(6):
        row = dict(ROW, id=f"live_simple_{i}-0-0")
        simple.append(row)
        kind = "spaceship" if i == 4 else "plus"
        answers.append(
            {"id": row["id"], "ground_truth": [{"uber.ride": {"loc": [f"{i} Main St"], "type": [kind]}}]}
        )
    irrelevance = [dict(ROW, id=f"live_irrelevance_{i}-0-0") for i in (10, 2, 1, 9)]
    for name, rows in (("live_simple", simple), ("live_irrelevance", irrelevance)):
        (root / f"BFCL_v4_{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "possible_answer" / "BFCL_v4_live_simple.json").write_text(
        "".join(json.dumps(a) + "\n" for a in answers)
    )


def test_derive_sample_on_a_small_directory(tmp_path: Path) -> None:
    write_bfcl_dir(tmp_path / "bfcl")
    out = tmp_path / "out" / "sample.jsonl"
    counts = {"live_simple": 3, "live_irrelevance": 9}
    assert bfcl.derive_sample(tmp_path / "bfcl", out, counts, seed=1) == 7
    text = out.read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["category"] for r in rows] == ["live_simple"] * 3 + ["live_irrelevance"] * 4
    assert "live_simple_4-0-0" not in {r["bfcl_id"] for r in rows}  # its answer is outside the enum
    assert [r["bfcl_id"] for r in rows[3:]] == [f"live_irrelevance_{i}-0-0" for i in (1, 2, 9, 10)]
    assert all(
        line == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"))
        for line in text.splitlines()
    )
    # Same seed, same bytes; the seed picks which rows.
    again = tmp_path / "again.jsonl"
    bfcl.derive_sample(tmp_path / "bfcl", again, counts, seed=1)
    assert again.read_bytes() == out.read_bytes()
    picks = set()
    for seed in range(6):
        bfcl.derive_sample(tmp_path / "bfcl", again, {"live_simple": 3}, seed=seed)
        picks.add(tuple(json.loads(line)["bfcl_id"] for line in again.read_text().splitlines()))
    assert len(picks) > 1
    with pytest.raises(ValueError, match="unknown BFCL live categories"):
        bfcl.derive_sample(tmp_path / "bfcl", again, {"simple_python": 1})


def test_packaged_sample_is_reproduced_byte_for_byte(tmp_path: Path) -> None:
    if not BFCL_DIR.is_dir():
        pytest.skip(
            f"BFCL v4 data not found at {BFCL_DIR} (set FLYWHEEL_BFCL_DIR to check the packaged sample)"
        )
    out = tmp_path / "sample.jsonl"
    count = bfcl.derive_sample(BFCL_DIR, out)
    packaged = importlib.resources.files("flywheel.demo").joinpath(bfcl.SAMPLE_RESOURCE).read_bytes()
    assert count == len(bfcl.load_sample())
    assert out.read_bytes() == packaged


def schema_types(schema: Any) -> list[str]:
    """Every ``type`` value in a parameter schema, through properties and items."""
    if not isinstance(schema, dict):
        return []
    found = [schema["type"]] if "type" in schema else []
    for sub in (schema.get("properties") or {}).values():
        found += schema_types(sub)
    return found + schema_types(schema.get("items"))


def test_packaged_sample() -> None:
    rows = bfcl.load_sample()
    assert bfcl.load_sample() is rows  # cached
    assert 300 <= len(rows) <= 700
    resource = importlib.resources.files("flywheel.demo").joinpath(bfcl.SAMPLE_RESOURCE)
    assert len(resource.read_bytes()) < 1_100_000
    assert importlib.resources.files("flywheel.demo").joinpath("data/NOTICE").read_text().count("Apache")
    categories = Counter(r["category"] for r in rows)
    assert set(categories) == set(bfcl.CATEGORIES)
    assert len({r["bfcl_id"] for r in rows}) == len(rows)
    for row in rows:
        assert set(row) == {"bfcl_id", "category", "messages", "tools", "tool_calls"}
        assert row["bfcl_id"].startswith(row["category"] + "_")
        assert row["messages"]
        assert row["messages"][-1]["role"] == "user"
        assert {m["role"] for m in row["messages"]} <= {"system", "user", "assistant"}
        names = [tool["function"]["name"] for tool in row["tools"]]
        assert all(OPENAI_NAME.match(name) for name in names)
        for tool in row["tools"]:
            assert not set(schema_types(tool["function"]["parameters"])) & BFCL_TYPES
        if row["category"] == "live_irrelevance":
            assert row["tool_calls"] == []
        else:
            assert row["tool_calls"]
            assert all(call["name"] in names for call in row["tool_calls"])
            assert all(isinstance(call["arguments"], dict) for call in row["tool_calls"])
        assert bfcl.calls_fit_tools(row)
    parallel = [r for r in rows if r["category"] in ("live_parallel", "live_parallel_multiple")]
    assert all(len(r["tool_calls"]) >= 2 for r in parallel)


def test_traffic_from_the_sample() -> None:
    start = datetime(2026, 11, 20, tzinfo=UTC)
    records = generate_traffic(
        kind="bfcl_live",
        workload_id="bfcl_live_assistant",
        start=start,
        end=start + timedelta(days=1),
        count=2000,
        seed=3,
        client_ids=["assistant-api"],
        noise_rate=0.0,
        pii_rate=0.0,  # the sample's own text, without planted personal data
    )
    by_question: dict[bytes, list[dict[str, Any]]] = {}
    for row in bfcl.load_sample():
        by_question.setdefault(
            orjson.dumps([row["messages"][-1], row["tools"]], option=orjson.OPT_SORT_KEYS), []
        ).append(row)
    categories: Counter[str] = Counter()
    for record in records:
        request, answer = record.source["request"], record.source["response"]["choices"][0]["message"]
        messages = request["messages"]
        assert messages[0]["role"] == "system"
        rows = by_question[orjson.dumps([messages[-1], request["tools"]], option=orjson.OPT_SORT_KEYS)]
        row = next(r for r in rows if messages[-len(r["messages"]) :] == r["messages"])
        if row["messages"][0]["role"] != "system":
            assert messages[0]["content"] == bfcl.SYSTEM_PROMPT
        categories[row["category"]] += 1
        if row["tool_calls"]:
            teacher = [
                {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                for c in answer["tool_calls"]
            ]
            assert teacher == row["tool_calls"]
        else:
            assert "tool_calls" not in answer
            assert answer["content"]
    assert set(categories) == set(bfcl.CATEGORIES)
