"""LoRA fine-tuning of a student model on a dataset's train / validation split (``flywheel train``).

One job: read the dataset's chat-form JSONL, encode it with :mod:`flywheel.train.formatting` (loss
on the assistant answer only), train a LoRA adapter with length-grouped batches (sequences of similar
length share a batch, so almost no compute goes to padding), evaluate the validation loss
periodically, stop early when it stops improving, and write the best adapter with its tokenizer,
``result.json`` and ``loss_curve.json`` to the output URI. A failure writes ``error.json`` there
instead, with an exit code that tells the orchestrator whether a retry can help.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flywheel import artifacts
from flywheel.config import LoraSettings, TrainingConfig
from flywheel.jobs import JobInputError, read_jsonl, run_job, write_result
from flywheel.storage import storage_options_from_env

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training job reports in ``result.json``."""

    base_model: str
    dataset: str
    output: str
    device: str
    dtype: str
    steps: int
    epochs_completed: float
    train_examples: int
    validation_examples: int
    truncated_examples: int
    skipped_examples: int
    tokens_seen: int
    tokens_per_s: float
    samples_per_s: float
    padding_share: float
    final_validation_loss: float | None
    best_validation_loss: float | None
    best_step: int | None
    stopped_early: bool
    wall_seconds: float
    peak_memory_mb: float
    trainable_parameters: int
    config_hash: str
    config: dict[str, Any] = field(default_factory=dict)


class TrainingInputError(JobInputError):
    """The dataset or model cannot be trained on as given (empty split, unreadable file...)."""


def training_config_hash(config: TrainingConfig, base_model: str) -> str:
    """Hash of the training settings and the base model: equal hashes mean equal training runs."""
    import hashlib

    payload = json.dumps({"config": config.model_dump(mode="json"), "base_model": base_model}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_training_job(dataset_uri: str, base_model: str, config: TrainingConfig, output_uri: str) -> int:
    """Train and publish the outputs; on failure publish ``error.json``. Returns the process exit code.

    Outputs of an earlier attempt at the same URI are removed first, so a retry never leaves a stale
    ``error.json`` next to a new ``result.json`` (or the reverse).
    """

    def body() -> None:
        result = train(dataset_uri, base_model, config, output_uri)
        figures = {k: v for k, v in asdict(result).items() if k != "config"}
        log.info("training finished: %s", json.dumps(figures))

    return run_job(output_uri, JOB_OUTPUTS, body, what="training")


JOB_OUTPUTS = (artifacts.LOSS_CURVE, artifacts.ADAPTER)
"""What a training job writes under its output URI besides ``result.json`` / ``error.json``."""


def train(dataset_uri: str, base_model: str, config: TrainingConfig, output_uri: str) -> TrainResult:
    """Fine-tune ``base_model`` on the dataset at ``dataset_uri`` and write the adapter to ``output_uri``."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    from flywheel.train.models import default_cache_dir, resolve_base_model

    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model_dir = resolve_base_model(
        base_model, default_cache_dir(), storage_options=storage_options_from_env()
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()

    train_split = encode_split(tokenizer, dataset_uri, "train", config.max_seq_length)
    validation_split = encode_split(tokenizer, dataset_uri, "validation", config.max_seq_length)
    train_set = train_split.examples
    validation_set = validation_split.examples[: config.max_validation_examples]
    skipped = train_split.skipped + validation_split.skipped
    if skipped:
        log.warning("%d examples skipped: their answer alone is longer than max_seq_length", skipped)
    if not train_set:
        raise TrainingInputError(f"{dataset_uri}: train.jsonl has no examples")

    model = get_peft_model(model, lora_config(config.lora))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    batches_per_epoch = math.ceil(len(train_set) / config.batch_size)
    steps_per_epoch = max(1, batches_per_epoch // config.gradient_accumulation)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    scheduler = get_scheduler(
        config.lr_schedule,
        optimizer,
        num_warmup_steps=int(total_steps * config.warmup_ratio),
        num_training_steps=total_steps,
    )
    pad_id = tokenizer.pad_token_id
    # transformers drops the KV cache under gradient checkpointing: the shared prefix needs it.
    share_prefix = not config.gradient_checkpointing
    curve: list[dict[str, Any]] = []
    best_loss: float | None = None
    best_step: int | None = None
    best_state: dict[str, Any] | None = None
    evaluations_without_gain = 0
    stopped_early = False
    tokens_seen = padded_tokens = samples_seen = 0
    step = 0
    eval_seconds = 0.0  # kept out of the throughput figures
    train_started = time.perf_counter()
    batches = _length_grouped_batches(train_set, config.batch_size, seed=config.seed)
    model.train()
    while step < total_steps:
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(config.gradient_accumulation):
            batch = next(batches)
            real = sum(len(ids) for ids, _ in batch)
            tokens_seen += real
            padded_tokens += max(len(ids) for ids, _ in batch) * len(batch) - real
            samples_seen += len(batch)
            loss = _batch_loss(model, batch, pad_id, device, share_prefix) / config.gradient_accumulation
            loss.backward()
            step_loss += float(loss.detach())
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        elapsed = time.perf_counter() - train_started - eval_seconds
        point: dict[str, Any] = {
            "step": step,
            "train_loss": round(step_loss, 5),
            "lr": scheduler.get_last_lr()[0],
        }
        if step % config.log_every_steps == 0 or step == total_steps:
            eta = elapsed / step * (total_steps - step)
            log.info(
                "step %d/%d loss %.4f lr %.2e %.0f tokens/s eta %.0fs",
                step,
                total_steps,
                step_loss,
                point["lr"],
                tokens_seen / elapsed,
                eta,
            )
        if validation_set and (step % config.eval_every_steps == 0 or step == total_steps):
            eval_started = time.perf_counter()
            validation_loss = _validation_loss(
                model, validation_set, config.batch_size, pad_id, device, share_prefix
            )
            eval_seconds += time.perf_counter() - eval_started
            point["validation_loss"] = round(validation_loss, 5)
            log.info("step %d validation loss %.4f", step, validation_loss)
            if best_loss is None or validation_loss < best_loss:
                best_loss, best_step, evaluations_without_gain = validation_loss, step, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
            else:
                evaluations_without_gain += 1
                if (
                    config.early_stopping_patience
                    and evaluations_without_gain >= config.early_stopping_patience
                ):
                    curve.append(point)
                    stopped_early = True
                    log.info(
                        "early stop at step %d: no better validation loss for %d evaluations",
                        step,
                        evaluations_without_gain,
                    )
                    break
        curve.append(point)
    train_seconds = time.perf_counter() - train_started - eval_seconds
    final_loss = next((p["validation_loss"] for p in reversed(curve) if "validation_loss" in p), None)
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)

    result = TrainResult(
        base_model=base_model,
        dataset=dataset_uri,
        output=output_uri,
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        steps=step,
        epochs_completed=round(samples_seen / len(train_set), 3),
        train_examples=len(train_set),
        validation_examples=len(validation_set),
        truncated_examples=train_split.truncated + validation_split.truncated,
        skipped_examples=skipped,
        tokens_seen=tokens_seen,
        tokens_per_s=round(tokens_seen / train_seconds, 1),
        samples_per_s=round(samples_seen / train_seconds, 2),
        padding_share=round(padded_tokens / max(1, tokens_seen + padded_tokens), 4),
        final_validation_loss=final_loss,
        best_validation_loss=None if best_loss is None else round(best_loss, 5),
        best_step=best_step,
        stopped_early=stopped_early,
        wall_seconds=round(time.perf_counter() - started, 2),
        peak_memory_mb=peak_memory_mb(device),
        trainable_parameters=trainable,
        config_hash=training_config_hash(config, base_model),
        config=config.model_dump(mode="json"),
    )
    _publish(model, tokenizer, result, curve, output_uri)
    return result


@dataclass
class EncodedSplit:
    """One split of a dataset encoded for training: (input_ids, labels) pairs and what was cut or left out."""

    examples: list[tuple[list[int], list[int]]]
    truncated: int
    """Examples whose prompt lost its start to fit ``max_seq_length``."""
    skipped: int
    """Examples left out: their answer alone is longer than ``max_seq_length``."""


def encode_split(tokenizer: Any, dataset_uri: str, name: str, max_seq_length: int) -> EncodedSplit:
    """Encode ``<dataset_uri>/<name>.jsonl`` with the shared chat formatting (loss on the answer only)."""
    from flywheel.train.formatting import AnswerTooLongError, encode_for_training

    split = EncodedSplit([], 0, 0)
    for _, record in read_jsonl(artifacts.split_uri(dataset_uri, name)):
        try:
            encoded = encode_for_training(
                tokenizer, record["messages"], record.get("tools") or [], max_length=max_seq_length
            )
        except AnswerTooLongError:
            split.skipped += 1  # nothing to learn from a cut answer
            continue
        split.truncated += encoded.truncated
        split.examples.append((encoded.input_ids, encoded.labels))
    return split


def lora_config(settings: LoraSettings) -> Any:
    """The peft ``LoraConfig`` of a causal LM for these settings."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )


def _length_grouped_batches(
    examples: list[tuple[list[int], list[int]]], batch_size: int, *, seed: int
) -> Iterator[list[tuple[list[int], list[int]]]]:
    """Endless batches of similar-length examples, reshuffled every epoch.

    Each epoch shuffles the examples, sorts windows of 64 batches by length, cuts them into batches and
    shuffles the batch order: padding stays small while the order stays random.
    """
    rng = random.Random(seed)
    window = batch_size * 64
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: len(examples[i][0]))
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        for batch in batches:
            yield [examples[i] for i in batch]


def _collate(batch: list[tuple[list[int], list[int]]], pad_id: int, device: str) -> dict[str, Any]:
    """Pad a batch to its longest sequence: input ids with ``pad_id``, labels with -100, attention mask 0."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, label) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(label)] = torch.tensor(label)
        attention[row, : len(ids)] = 1
    return {
        "input_ids": input_ids.to(device),
        "labels": labels.to(device),
        "attention_mask": attention.to(device),
    }


def _loss(model: Any, inputs: dict[str, Any]) -> Any:
    """The causal-LM loss of a batch, ``model(**inputs).loss``, with logits only where a label follows.

    transformers' loss is the mean cross-entropy of the logits at position t against the label at
    t + 1, over the labels that are not -100. Those are the assistant answer's tokens: a small share of
    each sequence. So the language-model head and the log-softmax over the vocabulary (for a small
    model the head is a large share of the compute, and its logits the largest activation) run only on
    the positions some row of the batch supervises (``logits_to_keep``); the others add nothing to the
    loss. Same value (up to float summation order), a fraction of the time and memory.
    """
    import torch

    targets = inputs["labels"][:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().squeeze(1)
    logits = model(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep
    ).logits
    return torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets[:, keep].flatten(), ignore_index=-100
    )


def shared_prefix_length(batch: list[tuple[list[int], list[int]]]) -> int:
    """Tokens every example of ``batch`` starts with, short of the last prompt token of any of them.

    In a workload the system message and the tool schemas (about 1,300 tokens of a router prompt)
    open every example. Each row keeps its tokens from the one before its first label on, so that
    every supervised token is predicted by a position of the row's own suffix.
    """
    first = batch[0][0]
    length = min(len(ids) for ids, _ in batch)
    for ids, labels in batch:
        supervised = next((i for i, label in enumerate(labels) if label != -100), len(labels))
        length = min(length, supervised - 1)
        n = 0
        while n < length and ids[n] == first[n]:
            n += 1
        length = n
    return max(length, 0)


MIN_SHARED_PREFIX = 32
"""A batch shares its prefix's computation when at least this many tokens open every example."""


def _batch_loss(
    model: Any, batch: list[tuple[list[int], list[int]]], pad_id: int, device: str, share_prefix: bool
) -> Any:
    """The loss of ``batch``: :func:`_shared_prefix_loss` when its rows share a prefix, else :func:`_loss`."""
    shared = shared_prefix_length(batch) if share_prefix and len(batch) > 1 else 0
    if shared >= MIN_SHARED_PREFIX:
        return _shared_prefix_loss(model, batch, shared, pad_id, device)
    return _loss(model, _collate(batch, pad_id, device))


def _shared_prefix_loss(
    model: Any, batch: list[tuple[list[int], list[int]]], shared: int, pad_id: int, device: str
) -> Any:
    """:func:`_loss` of ``batch``, running the ``shared`` tokens every example starts with once.

    The prefix runs once (batch 1, with gradients: LoRA adapts it too); its keys and values are
    broadcast to every row, and each row runs only its own suffix, right-padded, with positions that
    continue the prefix. Same loss and gradients as the whole batch (up to float summation order and
    LoRA dropout, which the prefix draws once for all rows), for a router batch of 8 about a fifth of
    the tokens: the prefix is most of each prompt, and every supervised token lies in the suffix.
    """
    import torch
    from transformers import DynamicCache

    prefix = model(
        input_ids=torch.tensor([batch[0][0][:shared]], device=device), use_cache=True, logits_to_keep=1
    ).past_key_values
    cache = DynamicCache()
    for layer, (keys, values) in enumerate((entry.keys, entry.values) for entry in prefix.layers):
        cache.update(keys.expand(len(batch), -1, -1, -1), values.expand(len(batch), -1, -1, -1), layer)
    inputs = _collate([(ids[shared:], labels[shared:]) for ids, labels in batch], pad_id, device)
    rows, width = inputs["input_ids"].shape
    attention = torch.cat(
        [torch.ones((rows, shared), dtype=torch.long, device=device), inputs["attention_mask"]], dim=1
    )
    positions = torch.arange(shared, shared + width, device=device).unsqueeze(0).expand(rows, -1)
    targets = inputs["labels"][:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().squeeze(1)
    logits = model(
        input_ids=inputs["input_ids"],
        attention_mask=attention,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=keep,
    ).logits
    return torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets[:, keep].flatten(), ignore_index=-100
    )


def _validation_loss(
    model: Any,
    examples: list[tuple[list[int], list[int]]],
    batch_size: int,
    pad_id: int,
    device: str,
    share_prefix: bool = True,
) -> float:
    """Mean loss per supervised token over the whole validation split."""
    import torch

    model.eval()
    total = weight = 0.0
    ordered = sorted(examples, key=lambda e: len(e[0]))
    with torch.no_grad():
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start : start + batch_size]
            supervised = sum(sum(1 for label in labels[1:] if label != -100) for _, labels in batch)
            if supervised:
                total += float(_batch_loss(model, batch, pad_id, device, share_prefix)) * supervised
                weight += supervised
    model.train()
    return total / weight if weight else float("nan")


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process in MiB: allocated CUDA memory, or the resident set on CPU."""
    if device == "cuda":
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    from flywheel.bench import peak_rss_mb

    return peak_rss_mb()


def _publish(
    model: Any, tokenizer: Any, result: TrainResult, curve: list[dict[str, Any]], output_uri: str
) -> None:
    """Write adapter, tokenizer, loss curve and result.json; result.json last, as the completion marker."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(output_uri, **storage_options_from_env())
    with tempfile.TemporaryDirectory(prefix="flywheel-train-") as tmp:
        local = Path(tmp)
        model.save_pretrained(local / artifacts.ADAPTER)
        tokenizer.save_pretrained(local / artifacts.ADAPTER)
        (local / artifacts.LOSS_CURVE).write_text(json.dumps(curve, indent=1))
        fs.makedirs(root, exist_ok=True)
        for path in sorted(local.rglob("*")):
            if path.is_file():
                target = artifacts.job_uri(root, path.relative_to(local).as_posix())
                fs.makedirs(posixpath.dirname(target), exist_ok=True)
                fs.put_file(str(path), target)
    write_result(output_uri, asdict(result))
