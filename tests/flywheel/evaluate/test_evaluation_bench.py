"""``flywheel bench eval``: both sides answer the same prompts, and the JSON says how fast and how alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_evaluation_runner import write_dataset


def test_bench_eval_prints_both_sides_and_their_agreement(tiny_model: str, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "router")
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "flywheel.cli",
            "bench",
            "eval",
            "--model",
            tiny_model,
            "--dataset",
            dataset,
            "--examples",
            "5",
            "--max-new-tokens",
            "6",
            "--batch-size",
            "2",
            "--precision",
            "float32",  # the exact agreement below holds in float32; bf16 batches may round apart
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )

    assert process.returncode == 0, process.stderr[-2000:]
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert (result["examples"], result["batch_size"], result["max_new_tokens"]) == (5, 2, 6)
    assert result["device"] == "cpu" and result["dtype"] == "float32"
    for side in ("ours", "baseline"):
        assert result[side]["seconds"] > 0
        assert result[side]["examples_per_s"] > 0
    ratio = result["ours"]["examples_per_s"] / result["baseline"]["examples_per_s"]
    assert result["speedup"] == pytest.approx(ratio, rel=0.05)
    # Greedy decoding of the same token ids: batching and the prefix cache change no answer.
    assert result["tool_call_agreement"] == result["text_agreement"] == 1.0
    # The prompts share the system message and the tool schemas: prefixes are computed once and
    # extended, never for every prompt (3 batches here, far fewer tokens than one prompt per batch).
    computed = result["prompt_tokens_computed_for_prefixes"]
    assert 0 < computed < 2 * result["prompt_tokens_mean"]
    assert result["ours"]["tokens_out"] >= 5
