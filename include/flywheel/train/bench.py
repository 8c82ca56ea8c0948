"""The training benchmark (``flywheel bench train``): our LoRA trainer against a plain transformers Trainer.

One job: measure how fast :func:`flywheel.train.trainer.train` trains compared with the setup most
people would write first, on the same model, data and hyper-parameters:

* **ours**: the production ``train()`` itself (a shared prefix runs once per batch, shared-prefix
  attention, batches of ``batch_size`` rows in micro-batches of ``micro_batch_size``), on a copy of
  the dataset's ``train.jsonl`` and the first ``validation_examples`` of its validation split. Its
  length-grouped batches are counted as ``_collate`` builds them.
* **baseline**: ``transformers.Trainer`` + peft with the same LoRA settings, the same encoded examples
  (:func:`~flywheel.train.formatting.encode_for_training` with the same ``max_seq_length``, so
  identical tokens and labels), batch size, number of optimizer steps, learning rate and schedule;
  batches drawn at random (the default ``RandomSampler``) and padded to their longest sequence;
  no evaluation, no checkpoints, ``report_to="none"``; fp32 on CPU, bf16 on CUDA; the same effective
  batch as ours, ``micro_batch_size`` rows per device batch with gradient accumulation.

Every side trains on the natural label mix (``label_balance: 1``, as the baseline's random sampler
draws), and every side's **validation loss** after training (mean per supervised token, over the same
validation examples, computed by the same function) is reported with its ratio to the baseline's: at
an equal number of examples, a faster method must learn as much.

Each side runs in its own fresh process (forked from a fork server that has only imported the
libraries), so peak-memory figures are not shared and neither side inherits the other's warm state.
Only the training steps are timed on both sides (model loading, encoding and validation are not).
Throughput counts REAL tokens only (padding excluded); ``speedup`` is ours tokens/s over baseline
tokens/s. Peak memory is the process's peak resident set on CPU, ``torch.cuda.max_memory_allocated``
on CUDA. On CUDA the model FLOPs utilisation is reported too:
``MFU = 6 * n_params * tokens/s / peak FLOPs``, with the peak from ``peak_tflops`` (default: an H100
SXM's dense bf16 989 TFLOPS) and ``n_params`` the base model's parameters plus the adapter's.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel import artifacts
from flywheel.config import TrainingConfig
from flywheel.errors import FlywheelError
from flywheel.train.trainer import peak_memory_mb

DEFAULT_STEPS = 2
"""Optimizer steps per side: the baseline takes about 6 minutes for SmolLM2-135M on 2 CPU cores."""
DEFAULT_BATCH_SIZE = 16
DEFAULT_MICRO_BATCH_SIZE = 4
DEFAULT_MAX_SEQ_LENGTH = 2048
DEFAULT_VALIDATION_EXAMPLES = 32
"""Validation examples every side's loss is measured on after training."""
H100_BF16_DENSE_TFLOPS = 989.0
"""Peak dense bf16 TFLOPS of an H100 SXM: the default denominator of the MFU."""
PRELOAD = ["torch", "transformers", "transformers.trainer", "peft", "flywheel.train.trainer"]
"""Modules the fork server imports once for both sides (nothing runs on torch before the fork)."""


class BenchSideKilledError(FlywheelError):
    """A side's process ended without a result (killed by a signal: on Linux usually out of memory)."""


@dataclass(frozen=True)
class BenchSettings:
    """What every side of one benchmark run shares (picklable: it crosses into the sides' processes)."""

    model: str
    dataset: str
    steps: int
    batch_size: int
    micro_batch_size: int
    max_seq_length: int
    peak_tflops: float
    validation_examples: int = DEFAULT_VALIDATION_EXAMPLES

    def training_config(self, **overrides: Any) -> TrainingConfig:
        """The TrainingConfig of every side: defaults, but for the benchmark's size settings.

        ``label_balance=1``: ours draws the data's natural mix, as the baseline's random sampler does.
        Validation runs once, after the last step.
        """
        return TrainingConfig(
            max_steps=self.steps,
            batch_size=self.batch_size,
            micro_batch_size=self.micro_batch_size,
            max_seq_length=self.max_seq_length,
            early_stopping_patience=None,
            label_balance=1.0,
            eval_every_steps=self.steps,
            max_validation_examples=self.validation_examples,
            **overrides,
        )


def bench_train(
    model: str,
    dataset: str,
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    micro_batch_size: int = DEFAULT_MICRO_BATCH_SIZE,
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    peak_tflops: float = H100_BF16_DENSE_TFLOPS,
    validation_examples: int = DEFAULT_VALIDATION_EXAMPLES,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train ``steps`` optimizer steps with each side (baseline, then ours); return the figures.

    ``model`` is anything :func:`~flywheel.train.models.resolve_base_model` accepts (a local
    checkpoint directory or the ``smollm2-135m-instruct`` alias); ``dataset`` is a dataset URI (a
    directory with ``train.jsonl`` and ``validation.jsonl``). The result is JSON-ready: one entry of
    figures per side, ``speedup`` (tokens/s) and ``examples_speedup`` (examples/s) of ours over each
    other side, and ``validation_loss_ratio``, each side's validation loss over the baseline's.
    """
    if batch_size % micro_batch_size:
        raise ValueError(f"batch_size {batch_size} is not a multiple of micro_batch_size {micro_batch_size}")
    settings = BenchSettings(
        model, dataset, steps, batch_size, micro_batch_size, max_seq_length, peak_tflops, validation_examples
    )
    # A fresh process per side (its own peak memory, no warm state from the other side), forked from
    # a fork server that has imported the heavy libraries once, so no side pays for the imports.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    sides: dict[str, dict[str, Any]] = {}
    for name, runner in SIDES.items():
        if not quiet:
            print(f"training {steps} steps with {name}...", file=sys.stderr)
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            try:
                sides[name] = pool.submit(runner, settings).result()
            except BrokenProcessPool:
                raise BenchSideKilledError(
                    f"the {name} side's process died without a result, most likely ended by the kernel's "
                    f"OOM killer at {micro_batch_size} rows per pass; run again with a smaller "
                    "--micro-batch-size"
                ) from None
    environment = sides["baseline"].pop("environment")
    for side in sides.values():
        side.pop("environment", None)
    ours, baseline_loss = sides["ours"], sides["baseline"]["validation_loss"]
    return {
        "benchmark": "train",
        "model": model,
        "dataset": dataset,
        **environment,
        "steps": steps,
        "batch_size": batch_size,
        "micro_batch_size": micro_batch_size,
        "max_seq_length": max_seq_length,
        "validation_examples": validation_examples,
        **sides,
        "speedup": {name: _ratio(ours["tokens_per_s"], side["tokens_per_s"]) for name, side in sides.items()},
        "examples_speedup": {
            name: _ratio(ours["samples_per_s"], side["samples_per_s"]) for name, side in sides.items()
        },
        "validation_loss_ratio": {
            name: _ratio(side["validation_loss"], baseline_loss) for name, side in sides.items()
        },
    }


def _ratio(value: float | None, reference: float | None) -> float | None:
    return round(value / reference, 3) if value is not None and reference else None


def summarize(result: dict[str, Any]) -> str:
    """A readable multi-line summary of a :func:`bench_train` result."""
    lines = [
        f"model {result['model']} on {result['dataset']}",
        f"  {result['device']} {result['dtype']}, {result['torch_threads']} torch threads; "
        f"{result['train_examples']} train examples, {result['mean_tokens']} mean / "
        f"{result['max_tokens']} max tokens; {result['steps']} steps of {result['batch_size']} "
        f"(max_seq_length {result['max_seq_length']}); validation loss on {result['validation_examples']}",
    ]
    for name in SIDES:
        side = result[name]
        mfu = f", MFU {side['mfu']:.1%}" if side.get("mfu") is not None else ""
        lines.append(
            f"  {name:<12} {side['tokens_per_s']:>9.1f} tokens/s {side['samples_per_s']:>7.2f} samples/s "
            f"padding {side['padding_share']:.1%}  peak {side['peak_memory_mb']:.0f} MiB  "
            f"{side['train_seconds']:.1f} s  validation loss {side['validation_loss']:.4f} "
            f"(x{result['validation_loss_ratio'][name]} of the baseline's){mfu}"
        )
        if side.get("time_split"):
            shares = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in side["time_split"].items())
            lines.append(f"  {'':<12} time per phase: {shares}")
    speedups = ", ".join(f"{result['examples_speedup'][name]}x {name}" for name in SIDES if name != "ours")
    lines.append(f"  ours in examples/s: {speedups}")
    return "\n".join(lines)


# --- the two sides, each run in its own process -------------------------------------------------------


def _run_ours(settings: BenchSettings) -> dict[str, Any]:
    """The production ``train()`` with its defaults."""
    return _run_trainer(settings, settings.training_config())


def _run_trainer(settings: BenchSettings, config: TrainingConfig) -> dict[str, Any]:
    """``train()`` with ``config`` on the train split and the first validation examples, counted from its
    own result: every step trains ``batch_size`` rows, ``tokens_seen`` counts their real tokens (a
    shared prefix once per row, as the baseline sees it, though it runs once per batch)."""
    import torch

    from flywheel.train import trainer

    with tempfile.TemporaryDirectory(prefix="flywheel-bench-train-") as tmp:
        data = Path(tmp) / "dataset"
        _copy_splits(settings.dataset, data)
        result = trainer.train(str(data), settings.model, config, str(Path(tmp) / "output"))
    samples = result.steps * config.batch_size * config.gradient_accumulation
    real = result.tokens_seen
    total = round(real / (1 - result.padding_share))
    train_seconds = result.tokens_seen / result.tokens_per_s
    n_params = _parameter_count(settings.model, trainable=result.trainable_parameters)
    return _figures(
        settings,
        device=result.device,
        dtype=result.dtype,
        steps=result.steps,
        train_examples=result.train_examples,
        samples=samples,
        real_tokens=real,
        total_tokens=total,
        train_seconds=train_seconds,
        n_params=n_params,
        extra={"torch_threads": torch.get_num_threads()},
        validation_loss=result.final_validation_loss,
        time_split=result.time_split,
    )


def _run_baseline(settings: BenchSettings) -> dict[str, Any]:
    """A plain ``transformers.Trainer`` + peft run on the same encoded examples and settings."""
    import torch
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from flywheel.train.models import default_cache_dir, resolve_base_model
    from flywheel.train.trainer import StepSettings, _validation_loss, encode_split, lora_config

    config = settings.training_config()
    model_dir = resolve_base_model(settings.model, default_cache_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Exactly the examples train() trains on: the same encoding, the same skipped over-long answers.
    examples = [
        {"input_ids": ids, "labels": labels}
        for ids, labels in encode_split(tokenizer, settings.dataset, "train", config.max_seq_length).examples
    ]
    if not examples:
        raise ValueError(f"{settings.dataset}: train.jsonl has no examples")
    lengths = [len(example["input_ids"]) for example in examples]

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = get_peft_model(model, lora_config(config.lora, model))
    n_params = _parameter_count(settings.model, trainable=model.get_nb_trainable_parameters()[0])
    collator = _PaddingCollator(pad_id)
    timer = _StepTimer(cuda)

    class _TimerCallback(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            timer.start()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            timer.stop()

    with tempfile.TemporaryDirectory(prefix="flywheel-bench-baseline-") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            max_steps=config.max_steps,
            per_device_train_batch_size=settings.micro_batch_size,
            gradient_accumulation_steps=config.gradient_accumulation
            * settings.batch_size
            // settings.micro_batch_size,
            learning_rate=config.learning_rate,
            lr_scheduler_type=config.lr_schedule,
            warmup_steps=int(config.max_steps * config.warmup_ratio),  # as train() rounds it
            weight_decay=config.weight_decay,
            max_grad_norm=1.0,
            seed=config.seed,
            bf16=cuda,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_pin_memory=cuda,
            remove_unused_columns=False,
            label_names=["labels"],
        )
        run = Trainer(
            model=model,
            args=args,
            train_dataset=examples,
            data_collator=collator,
            callbacks=[_TimerCallback()],
        )
        run.remove_callback(PrinterCallback)  # it prints the final metrics to stdout, where the JSON goes
        state = run.train()
    validation = encode_split(tokenizer, settings.dataset, "validation", config.max_seq_length)
    step_settings = StepSettings(
        device="cuda" if cuda else "cpu", pad_id=pad_id, autocast=False, share_prefix=True
    )
    validation_loss = _validation_loss(
        model, validation.examples[: settings.validation_examples], settings.micro_batch_size, step_settings
    )
    # Only the batches the optimizer steps consumed count (a loader may build one more).
    used = collator.batches[: config.max_steps * args.gradient_accumulation_steps]
    samples, real, total = (sum(column) for column in zip(*used, strict=True))
    figures = _figures(
        settings,
        device="cuda" if cuda else "cpu",
        dtype=str(dtype).removeprefix("torch."),
        steps=state.global_step,
        train_examples=len(examples),
        samples=samples,
        real_tokens=real,
        total_tokens=total,
        train_seconds=timer.seconds,
        n_params=n_params,
        extra={"torch_threads": torch.get_num_threads()},
        validation_loss=round(validation_loss, 5),
    )
    figures["environment"].update(
        train_examples=len(examples),
        mean_tokens=round(statistics.mean(lengths), 1),
        max_tokens=max(lengths),
    )
    return figures


class _PaddingCollator:
    """The plain collator: pad to the batch's longest sequence (input ids with the pad id, labels with
    -100, attention mask 0), recording (samples, real tokens, padded size) of every batch it builds."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.batches: list[tuple[int, int, int]] = []

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        from flywheel.train.trainer import _collate

        # The Trainer moves the batch to its device itself.
        inputs = _collate([(f["input_ids"], f["labels"]) for f in features], self.pad_id, "cpu")
        real = sum(len(f["input_ids"]) for f in features)
        self.batches.append((len(features), real, inputs["input_ids"].numel()))
        return inputs


class _StepTimer:
    """Wall time from the start of training to the end of the last optimizer step (CUDA synchronised)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.started = self.stopped = 0.0

    def start(self) -> None:
        self.started = self.stopped = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.stopped = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.stopped - self.started


def _figures(
    settings: BenchSettings,
    *,
    device: str,
    dtype: str,
    steps: int,
    train_examples: int,
    samples: int,
    real_tokens: int,
    total_tokens: int,
    train_seconds: float,
    n_params: int,
    extra: dict[str, Any],
    validation_loss: float | None,
    time_split: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One side's figures, plus the ``environment`` it ran in (merged into the top level); ``time_split``:
    seconds per training phase where the side measures them (ours on a CPU)."""
    tokens_per_s = real_tokens / train_seconds
    mfu = None
    if device == "cuda":
        mfu = round(6 * n_params * tokens_per_s / (settings.peak_tflops * 1e12), 4)
    return {
        "tokens_per_s": round(tokens_per_s, 1),
        "samples_per_s": round(samples / train_seconds, 3),
        "padding_share": round(1 - real_tokens / total_tokens, 4) if total_tokens else 0.0,
        "peak_memory_mb": peak_memory_mb(device),
        "train_seconds": round(train_seconds, 3),
        "steps": steps,
        "samples": samples,
        "samples_per_step": round(samples / steps, 2) if steps else 0.0,
        "real_tokens": real_tokens,
        "padded_tokens": total_tokens - real_tokens,
        "train_examples": train_examples,
        "n_params": n_params,
        "mfu": mfu,
        "validation_loss": validation_loss,
        "time_split": time_split,
        "environment": {"device": device, "dtype": dtype, **extra},
    }


def _parameter_count(model: str, *, trainable: int) -> int:
    """Parameters of the base model (from its safetensors headers) plus the adapter's trainable ones."""
    from flywheel.train.models import default_cache_dir, resolve_base_model

    total = 0
    for path in sorted(resolve_base_model(model, default_cache_dir()).glob("*.safetensors")):
        with path.open("rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for size in tensor["shape"]:
                    count *= size
                total += count
    return total + trainable


def _copy_splits(dataset: str, target: Path) -> None:
    """``train.jsonl`` and ``validation.jsonl`` of ``dataset`` (any fsspec URI) into ``target``."""
    import fsspec

    target.mkdir(parents=True)
    for split in ("train", "validation"):
        with (
            fsspec.open(artifacts.split_uri(dataset, split), "rb") as source,
            (target / artifacts.split_name(split)).open("wb") as copy,
        ):
            shutil.copyfileobj(source, copy)


SIDES = {"baseline": _run_baseline, "ours": _run_ours}
"""The sides of the benchmark, in the order they run and are reported."""
