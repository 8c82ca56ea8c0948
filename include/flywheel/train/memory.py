"""Keeping a training job within its memory budget: batches split into micro-batches before they overflow.

A CPU job that outgrows its machine is not told so: the kernel's OOM killer ends it with SIGKILL, and
nothing of it survives to report why. So the trainer plans each batch before running it. A batch's
memory is the part of the activations kept for the backward pass, which grows with the tokens that run
with gradients (attention runs in SDPA's fused kernel, which keeps no attention weights), plus the
logits of the supervised positions. :class:`MemoryPlanner` estimates both from the model's shape,
splits a batch into micro-batches of as many rows as fit the budget (gradients are accumulated over
them, so the effective batch and the loss stay the same), and corrects its estimate with the peak
resident set it observes after each micro-batch (``/proc/self/status`` VmHWM, reset before each one),
so a model it estimates badly is split more finely from then on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BUDGET_SHARE = 0.85
"""Share of the machine's (or the container's) memory a job plans to use when no budget is configured:
the rest is the kernel's, the page cache's and the allocator's slack."""

ACTIVATION_FLOATS_PER_LAYER = (12, 6)
"""Values kept for the backward pass per token and layer, as multiples of (hidden size, MLP width).

Counted for a Llama-style block with LoRA on every linear layer (the norms' inputs and outputs, q/k/v/o
and the LoRA branches' inputs, the attention output, the gate, up, activation and down inputs), then
rounded up; :meth:`MemoryPlanner.observe` corrects it with what is measured."""


def available_memory_mb() -> float:
    """The memory this process may use, in MiB: the cgroup's limit (a pod's) or the machine's total."""
    limits = [_meminfo_total_mb()]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: no limit
            limits.append(int(text) / 2**20)
    return min(limit for limit in limits if limit > 0)


def _meminfo_total_mb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 2**20


def resident_mb() -> float:
    """The current resident set of this process in MiB (0 where ``/proc`` is unavailable)."""
    return _status_mb("VmRSS:")


def in_use_mb() -> float:
    """The resident set less the free blocks glibc's heap keeps for reuse (:func:`keep_freed_memory`):
    the memory live objects hold, which is what a next batch competes with."""
    return max(0.0, resident_mb() - _heap_free_mb())


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _libc() -> Any:
    """The C library, loaded once (None where it cannot be loaded)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _heap_free_mb() -> float:
    """Free bytes in glibc's heap (``mallinfo2().fordblks``), in MiB; 0 where that is unavailable."""
    mallinfo2 = getattr(_libc(), "mallinfo2", None)
    if mallinfo2 is None:
        return 0.0
    mallinfo2.restype = _MallInfo2
    return mallinfo2().fordblks / 2**20


def peak_resident_mb() -> float:
    """The resident set's high-water mark since the last :func:`reset_peak` (or the process start)."""
    return _status_mb("VmHWM:")


_peaks_before_resets_mb: list[float] = []
"""The high-water marks :func:`reset_peak` cleared: the process's own peak is the highest of them and
the current one."""


def reset_peak() -> bool:
    """Reset the high-water mark to the current resident set (Linux ``clear_refs``); False if unsupported.
    The mark it clears still counts in :func:`process_peak_mb`."""
    peak = peak_resident_mb()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    _peaks_before_resets_mb[:] = [max([peak, *_peaks_before_resets_mb])]
    return True


def process_peak_mb() -> float:
    """The resident set's high-water mark over the whole process, across :func:`reset_peak` calls."""
    return max([peak_resident_mb(), *_peaks_before_resets_mb])


def _status_mb(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class MemoryPlanner:
    """Rows per micro-batch that keep a job within ``budget_mb`` (see the module docstring).

    Per row of a micro-batch: ``token_mb`` per token that runs with gradients (the activations kept for
    the backward pass) and ``logit_mb`` per supervised position
    (the vocabulary's logits and their gradient). ``correction`` scales the estimate; it only grows,
    from observed peaks.
    """

    budget_mb: float
    token_mb: float
    logit_mb: float
    correction: float = 1.0

    @classmethod
    def for_model(cls, model_config: Any, budget_mb: float, *, element_bytes: int) -> MemoryPlanner:
        """Estimates from a transformers model config (hidden size, MLP width, layers, vocabulary)."""
        config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        hidden = config.hidden_size
        width = getattr(config, "intermediate_size", None) or 4 * hidden
        layers = config.num_hidden_layers
        mb = element_bytes / 2**20
        per_hidden, per_width = ACTIVATION_FLOATS_PER_LAYER
        return cls(
            budget_mb=budget_mb,
            token_mb=layers * (per_hidden * hidden + per_width * width) * mb,
            logit_mb=config.vocab_size * 4 * 3 / 2**20,
        )

    def row_mb(self, tokens: int, supervised: int) -> float:
        """Estimated memory of one row of ``tokens`` tokens with gradients and ``supervised`` positions."""
        raw = tokens * self.token_mb + supervised * self.logit_mb
        return raw * self.correction

    def rows_that_fit(self, rows: int, row_mb: float, free_mb: float) -> int:
        """How many of ``rows`` rows of ``row_mb`` one micro-batch may hold with ``free_mb`` left (>= 1)."""
        if row_mb <= 0:
            return rows
        return max(1, min(rows, math.floor(free_mb / row_mb)))

    def observe(self, estimated_mb: float, peak_mb: float) -> None:
        """Learn from a micro-batch estimated at ``estimated_mb`` that peaked ``peak_mb`` above rest."""
        if estimated_mb > 0 and peak_mb > estimated_mb:
            before = self.correction
            self.correction *= peak_mb / estimated_mb
            log.info(
                "memory estimate corrected: x%.2f (a micro-batch peaked %.0f MiB above rest)",
                self.correction / before,
                peak_mb,
            )


M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    A training step allocates and frees gigabytes of activations. glibc serves each large block with its
    own ``mmap`` and unmaps it when freed, so the next step faults every page in again; on the 2-core
    development VMs that cost about 0.65 s per GiB, several seconds a step (measured: ten 1 GiB blocks
    allocated and filled in 6.6 s, 0.65 s with this setting). With ``mmap`` off and a high trim
    threshold, freed blocks stay in the heap and are reused at memory speed; the resident set stays at
    the job's peak, which is what a job's memory budget counts anyway. Returns False where the C
    library is not glibc (nothing changes there).
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
