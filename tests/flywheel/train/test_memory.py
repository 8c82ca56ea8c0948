"""The training job's memory budget: estimates, micro-batch sizing, peak measurement, malloc settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flywheel.train import memory
from flywheel.train.memory import MemoryPlanner


def test_memory_in_use_leaves_out_the_free_blocks_the_heap_keeps():
    script = (
        "from flywheel.train import memory\n"
        "memory.keep_freed_memory()\n"
        "before = memory.in_use_mb()\n"
        "block = bytearray(300 * 2**20); del block\n"
        "print(memory.resident_mb() - before, memory.in_use_mb() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    resident_growth, in_use_growth = map(float, out.split())
    assert resident_growth > 250 and in_use_growth < 50


def test_the_available_memory_is_the_machines_or_the_containers():
    available = memory.available_memory_mb()
    assert 0 < available <= memory._meminfo_total_mb()


def test_estimates_follow_the_models_shape():
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4
    )
    planner = MemoryPlanner.for_model(config, 1000.0, element_bytes=4)
    per_hidden, per_width = memory.ACTIVATION_FLOATS_PER_LAYER
    assert planner.token_mb == pytest.approx(3 * (per_hidden * 64 + per_width * 256) * 4 / 2**20)
    assert planner.logit_mb == pytest.approx(1000 * 4 * 3 / 2**20)
    assert planner.row_mb(100, 10) == pytest.approx(100 * planner.token_mb + 10 * planner.logit_mb)
    assert MemoryPlanner.for_model(config, 1000.0, element_bytes=2).token_mb == planner.token_mb / 2


def test_micro_batches_hold_as_many_rows_as_fit_and_at_least_one():
    planner = MemoryPlanner(budget_mb=10_000, token_mb=1.0, logit_mb=0.0)
    row = planner.row_mb(100, 0)  # 100 MiB
    assert planner.rows_that_fit(32, row, free_mb=1_000) == 10
    assert planner.rows_that_fit(8, row, free_mb=1_000) == 8
    assert planner.rows_that_fit(32, row, free_mb=50) == 1  # a single row runs even if it may not fit


def test_an_observed_peak_above_the_estimate_raises_every_later_estimate():
    planner = MemoryPlanner(budget_mb=10_000, token_mb=1.0, logit_mb=0.0)
    planner.observe(estimated_mb=100, peak_mb=50)  # below: nothing to learn
    assert planner.correction == 1.0
    planner.observe(estimated_mb=100, peak_mb=250)
    assert planner.correction == pytest.approx(2.5)
    assert planner.row_mb(100, 0) == pytest.approx(250)


def test_the_peak_resident_set_is_measured_from_the_last_reset():
    if not memory.reset_peak():
        pytest.skip("no /proc/self/clear_refs here")
    before = memory.peak_resident_mb()
    block = bytearray(200 * 2**20)  # touched: resident
    assert memory.peak_resident_mb() >= before + 150
    peak = memory.peak_resident_mb()
    del block
    memory.reset_peak()
    assert memory.peak_resident_mb() < memory.resident_mb() + 50
    # The job's own peak (what a training result reports) still counts the block (the kernel's resident
    # set counters are per-CPU approximations, a few pages apart between reads).
    assert memory.process_peak_mb() >= peak - 2


def test_freed_memory_stays_in_the_heap_for_reuse():
    # In a child process: the setting lasts for the process. Freed blocks stay resident for reuse.
    script = (
        "from flywheel.train import memory\n"
        "assert memory.keep_freed_memory()\n"
        "block = bytearray(300 * 2**20); del block\n"
        "print(memory.resident_mb())\n"
    )
    resident = float(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    )
    assert resident > 250
