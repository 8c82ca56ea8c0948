"""flywheel.train.bench on a tiny Llama: both sides report consistent figures, the CLI prints JSON.

Named test_training_bench (not test_bench): test modules are imported by basename, and
tests/flywheel/test_bench.py covers flywheel.bench."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.train.bench import summarize

FLYWHEEL = str(Path(sys.executable).with_name("flywheel"))
STEPS, BATCH = 3, 4
SIDE_KEYS = {
    "time_split",
    "tokens_per_s",
    "samples_per_s",
    "padding_share",
    "peak_memory_mb",
    "train_seconds",
    "steps",
    "samples",
    "real_tokens",
    "mfu",
    "validation_loss",
}
SIDES = ("baseline", "ours")


@pytest.fixture(scope="module")
def varied_dataset(tmp_path_factory) -> str:
    """Tool-free chats whose prompts run from a few words to a few hundred: lengths vary widely."""
    root = tmp_path_factory.mktemp("varied")
    rng = random.Random(3)
    lines = []
    for index in range(48):
        words = " ".join(
            rng.choice(["order", "refund", "late", "parcel", "help"])
            for _ in range(8 * 2 ** rng.randint(0, 5))
        )
        messages = [
            {"role": "system", "content": "Route the request."},
            {"role": "user", "content": f"Request {index}: {words}"},
            {"role": "assistant", "content": rng.choice(["billing", "shipping", "other"])},
        ]
        lines.append(json.dumps({"messages": messages, "tools": []}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    (root / "validation.jsonl").write_text(lines[0] + "\n")
    return str(root)


@pytest.fixture(scope="module")
def result(varied_dataset, tiny_model) -> dict:
    """One benchmark run through the CLI with ``--json`` (each side in its own fresh process)."""
    out = subprocess.run(
        [
            FLYWHEEL,
            "bench",
            "train",
            "--model",
            tiny_model,
            "--dataset",
            varied_dataset,
            "--steps",
            str(STEPS),
            "--batch-size",
            str(BATCH),
            "--micro-batch-size",
            "2",
            "--max-seq-length",
            "512",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_side_reports_its_figures(result):
    assert result["benchmark"] == "train"
    assert result["device"] == "cpu"
    assert result["dtype"] == "float32"
    assert result["torch_threads"] >= 1
    assert result["train_examples"] == 48
    assert result["max_tokens"] > 3 * result["mean_tokens"] / 2
    for side in SIDES:
        figures = result[side]
        assert set(figures) >= SIDE_KEYS, side
        assert figures["steps"] == STEPS
        assert figures["train_examples"] == 48
        assert figures["tokens_per_s"] > 0
        assert figures["peak_memory_mb"] > 0
        assert figures["mfu"] is None  # CPU: no MFU
        # Real tokens only: tokens/s * seconds gives back the real-token count.
        assert figures["tokens_per_s"] * figures["train_seconds"] == pytest.approx(
            figures["real_tokens"], rel=0.01
        )
        # Validated on the same example after the same number of examples: comparable losses.
        assert figures["validation_loss"] > 0
        assert result["validation_loss_ratio"][side] == pytest.approx(
            figures["validation_loss"] / result["baseline"]["validation_loss"], abs=0.001
        )
        assert result["speedup"][side] == pytest.approx(
            result["ours"]["tokens_per_s"] / figures["tokens_per_s"], rel=0.01
        )
        assert result["examples_speedup"][side] == pytest.approx(
            result["ours"]["samples_per_s"] / figures["samples_per_s"], rel=0.01
        )
    # Where our steps spent their time, measured on a CPU; the plain Trainer is not instrumented.
    split = result["ours"]["time_split"]
    assert split["forward"] > 0 and split["backward"] > 0 and split["optimizer"] > 0
    assert sum(split.values()) <= result["ours"]["train_seconds"]
    assert result["baseline"]["time_split"] is None


def test_every_side_sees_the_same_samples_per_step_and_ours_pads_less(result):
    ours, baseline = result["ours"], result["baseline"]
    assert ours["samples"] == baseline["samples"] == STEPS * BATCH
    assert ours["real_tokens"] <= STEPS * BATCH * result["max_tokens"]
    assert 0 <= ours["padding_share"] < baseline["padding_share"]


def test_the_summary_names_every_side_and_the_speedups(result):
    text = summarize(result)

    assert all(side in text for side in SIDES)
    assert f"{result['examples_speedup']['baseline']}x baseline" in text
    assert "time per phase: prefix" in text


def _killed_side(settings) -> dict:
    """A side whose process the kernel kills mid-run, as its OOM killer does (SIGKILL, no result)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def test_a_side_killed_by_the_kernel_is_a_clear_error(monkeypatch, varied_dataset, tiny_model):
    from flywheel.train import bench

    monkeypatch.setattr(bench, "SIDES", {"baseline": _killed_side})
    with pytest.raises(bench.BenchSideKilledError, match=r"baseline side's process died.*--micro-batch-size"):
        bench.bench_train(tiny_model, varied_dataset, micro_batch_size=2, batch_size=4, quiet=True)
