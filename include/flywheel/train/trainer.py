"""LoRA fine-tuning of a student model on a dataset's train / validation split (``flywheel train``).

One job: read the dataset's chat-form JSONL, encode it with :mod:`flywheel.train.formatting` (loss
on the assistant answer only), train a LoRA adapter with length-grouped batches (sequences of similar
length share a batch, so almost no compute goes to padding), evaluate the validation loss
periodically, stop early when it stops improving, and write the best adapter with its tokenizer,
``result.json`` and ``loss_curve.json`` to the output URI. A failure writes ``error.json`` there
instead, with an exit code that tells the orchestrator whether a retry can help.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import posixpath
import random
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from flywheel import artifacts
from flywheel.config import LoraSettings, TrainingConfig
from flywheel.jobs import JobInputError, read_jsonl, run_job, write_result
from flywheel.shared_prefix import use_shared_prefix_attention
from flywheel.storage import storage_options_from_env
from flywheel.train import memory, sampling
from flywheel.train.memory import MemoryPlanner

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
    train_labels: dict[str, int]
    """Examples of the train split per label (:func:`flywheel.train.sampling.label_of`)."""
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
    init_adapter: str | None
    """The adapter training started from (the champion's, ``--init-adapter``); None: a fresh LoRA."""
    parent_version: int | None
    """The registry version of the champion that ``init_adapter`` is the adapter of."""
    optimizer_resumed: bool = False
    """Whether the warm start resumed the optimizer's moments saved with ``init_adapter``."""
    time_split: dict[str, float] | None = None
    """Seconds the training steps spent in each phase (:class:`PhaseClock`); None on a GPU."""
    config: dict[str, Any] = field(default_factory=dict)


class TrainingInputError(JobInputError):
    """The dataset or model cannot be trained on as given (empty split, unreadable file...)."""


def training_config_hash(config: TrainingConfig, base_model: str) -> str:
    """Hash of the training settings and the base model: equal hashes mean equal training runs."""
    import hashlib

    payload = json.dumps({"config": config.model_dump(mode="json"), "base_model": base_model}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_training_job(
    dataset_uri: str,
    base_model: str,
    config: TrainingConfig,
    output_uri: str,
    *,
    init_adapter: str | None = None,
    parent_version: int | None = None,
) -> int:
    """Train and publish the outputs; on failure publish ``error.json``. Returns the process exit code.

    Outputs of an earlier attempt at the same URI are removed first, so a retry never leaves a stale
    ``error.json`` next to a new ``result.json`` (or the reverse).
    """

    def body() -> None:
        result = train(
            dataset_uri,
            base_model,
            config,
            output_uri,
            init_adapter=init_adapter,
            parent_version=parent_version,
        )
        figures = {k: v for k, v in asdict(result).items() if k != "config"}
        log.info("training finished: %s", json.dumps(figures))

    return run_job(output_uri, JOB_OUTPUTS, body, what="training")


JOB_OUTPUTS = (artifacts.LOSS_CURVE, artifacts.ADAPTER)
"""What a training job writes under its output URI besides ``result.json`` / ``error.json``."""


def train(
    dataset_uri: str,
    base_model: str,
    config: TrainingConfig,
    output_uri: str,
    *,
    init_adapter: str | None = None,
    parent_version: int | None = None,
) -> TrainResult:
    """Fine-tune ``base_model`` on the dataset at ``dataset_uri`` and write the adapter to ``output_uri``.

    ``init_adapter``: start from this adapter (a warm start from the champion's, registry version
    ``parent_version``) instead of a fresh LoRA; see :func:`_lora_model`.
    """
    import torch
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
    dtype, autocast = training_precision(config.precision, device)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    if device == "cpu":
        memory.keep_freed_memory()
    if use_shared_prefix_attention(model):
        log.info("attention: shared-prefix (flywheel.shared_prefix)")
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

    warm = init_adapter is not None
    learning_rate = (warm and config.warm_start_learning_rate) or config.learning_rate
    with _fetched_adapter(init_adapter) as champion:
        model = _lora_model(model, config.lora, champion)
        optimizer = _optimizer(model, config, learning_rate)
        resume = warm and config.warm_start_optimizer == "resume"
        optimizer_resumed = resume and _resume_optimizer(optimizer, champion)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batches_per_epoch = math.ceil(len(train_set) / config.batch_size)
    steps_per_epoch = max(1, batches_per_epoch // config.gradient_accumulation)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    if warm and config.warm_start_steps:
        total_steps = config.warm_start_steps
    scheduler = get_scheduler(
        config.lr_schedule,
        optimizer,
        num_warmup_steps=int(total_steps * config.warmup_ratio),
        num_training_steps=total_steps,
    )
    step_settings = StepSettings(
        device=device,
        pad_id=tokenizer.pad_token_id,
        autocast=autocast,
        # transformers drops the KV cache under gradient checkpointing: the shared prefix needs it.
        share_prefix=not config.gradient_checkpointing,
        prefix_gradient=config.prefix_gradient == "exact",
        planner=memory_planner(model, config, device, dtype),
        micro_batch_size=config.micro_batch_size,
        opening=(
            OpeningWeight(config.opening_tokens, config.opening_weight)
            if config.opening_tokens and config.opening_weight != 1.0
            else None
        ),
    )
    clock = PhaseClock(enabled=device == "cpu")
    kept_prefix = (
        KeptPrefix(config.prefix_refresh_steps)
        if step_settings.share_prefix and not step_settings.prefix_gradient
        else None
    )
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
    batches = _length_grouped_batches(
        train_set,
        train_split.call_shapes if config.label_balance_by == "call_shape" else train_split.answer_labels,
        config.batch_size,
        seed=config.seed,
        balance=config.label_balance,
    )
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
            scale = 1.0 / (max(1, supervised_tokens(batch)) * config.gradient_accumulation)
            step_loss += (
                run_batch(
                    model, batch, step_settings, backward_scale=scale, clock=clock, kept_prefix=kept_prefix
                )
                * scale
            )
        with clock.phase("optimizer"):
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
        if kept_prefix is not None:
            kept_prefix.age_one_step()
        step += 1
        elapsed = time.perf_counter() - train_started - eval_seconds
        point: dict[str, Any] = {
            "step": step,
            artifacts.TRAIN_LOSS: round(step_loss, 5),
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
            validation_loss = _validation_loss(model, validation_set, config.batch_size, step_settings)
            eval_seconds += time.perf_counter() - eval_started
            point[artifacts.VALIDATION_LOSS] = round(validation_loss, 5)
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
    final_loss = next(
        (p[artifacts.VALIDATION_LOSS] for p in reversed(curve) if artifacts.VALIDATION_LOSS in p), None
    )
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    if clock.seconds is not None:
        log.info("where the training time went: %s", clock.describe(step))
    if kept_prefix is not None:
        log.info(
            "shared prefix computed %d times in %d steps (prefix_refresh_steps %d)",
            kept_prefix.computed,
            step,
            config.prefix_refresh_steps,
        )

    result = TrainResult(
        base_model=base_model,
        dataset=dataset_uri,
        output=output_uri,
        device=device,
        dtype=str(dtype).removeprefix("torch.") + (" (bf16 autocast)" if autocast else ""),
        steps=step,
        epochs_completed=round(samples_seen / len(train_set), 3),
        train_examples=len(train_set),
        train_labels=train_split.label_counts,
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
        init_adapter=init_adapter,
        parent_version=parent_version,
        optimizer_resumed=optimizer_resumed,
        time_split=clock.rounded(),
        config=config.model_dump(mode="json"),
    )
    _publish(model, tokenizer, optimizer, result, curve, output_uri)
    return result


@dataclass
class EncodedSplit:
    """One split of a dataset encoded for training: (input_ids, labels) pairs and what was cut or left out."""

    examples: list[tuple[list[int], list[int]]]
    truncated: int
    """Examples whose prompt lost its start to fit ``max_seq_length``."""
    skipped: int
    """Examples left out: their answer alone is longer than ``max_seq_length``."""
    answer_labels: list[str]
    """Each example's label (:func:`flywheel.train.sampling.label_of`), in the order of ``examples``."""
    call_shapes: list[str]
    """Each example's call shape (:func:`flywheel.train.sampling.call_shape_of`), in the same order."""

    @property
    def label_counts(self) -> dict[str, int]:
        """Examples per label, most frequent first."""
        return sampling.label_counts(self.answer_labels)


def encode_split(tokenizer: Any, dataset_uri: str, name: str, max_seq_length: int) -> EncodedSplit:
    """Encode ``<dataset_uri>/<name>.jsonl`` with the shared chat formatting (loss on the answer only)."""
    from flywheel.train.formatting import AnswerTooLongError, encode_for_training

    split = EncodedSplit([], 0, 0, [], [])
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
        split.answer_labels.append(sampling.label_of(record["messages"]))
        split.call_shapes.append(sampling.call_shape_of(record["messages"]))
    return split


def lora_config(settings: LoraSettings, model: Any) -> Any:
    """The peft ``LoraConfig`` of the causal LM ``model`` for these settings."""
    from peft import LoraConfig

    targets, layers = settings.target_modules, None
    if settings.top_layers is not None:
        count = model.config.num_hidden_layers
        layers = list(range(max(count - settings.top_layers, 0), count))
        if targets == "all-linear":  # peft takes layers_to_transform only with named modules
            targets = _linear_module_names(model)
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def _linear_module_names(model: Any) -> list[str]:
    """The names of the linear modules inside ``model``'s transformer layers, as ``all-linear`` picks them
    (the output head left out)."""
    import torch

    head = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head
        }
    )


class AdapterMismatchError(TrainingInputError):
    """The adapter to start from (``--init-adapter``) is not shaped as the configured ``lora`` settings."""


def _optimizer(model: Any, config: TrainingConfig, learning_rate: float) -> Any:
    """AdamW over the adapter's trainable weights at ``learning_rate``; with ``lora.loraplus_lr_ratio``
    above 1, LoRA+ (the B matrices at that multiple of the learning rate)."""
    import torch

    if config.lora.loraplus_lr_ratio > 1:
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model,
            torch.optim.AdamW,
            lr=learning_rate,
            loraplus_lr_ratio=config.lora.loraplus_lr_ratio,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=learning_rate,
        weight_decay=config.weight_decay,
    )


class FetchedAdapter(NamedTuple):
    """An adapter to start from: where it was configured (for messages) and the local copy to read."""

    uri: str
    directory: Path


@contextlib.contextmanager
def _fetched_adapter(uri: str | None) -> Iterator[FetchedAdapter | None]:
    """The adapter at ``uri`` fetched once for the warm start's weights and optimizer state (None: none)."""
    if uri is None:
        yield None
        return
    from flywheel.train.models import fetch_adapter

    with fetch_adapter(uri, storage_options=storage_options_from_env()) as directory:
        yield FetchedAdapter(uri, Path(directory))


def _resume_optimizer(optimizer: Any, adapter: FetchedAdapter) -> bool:
    """Load the moments saved with ``adapter`` into ``optimizer``; False (and why, logged) when there are
    none or they do not fit its parameters. The learning rate and other settings stay the new run's."""
    import torch

    path = adapter.directory / artifacts.OPTIMIZER_STATE
    if not path.is_file():
        log.info("warm start: %s has no optimizer state, the optimizer starts fresh", adapter.uri)
        return False
    saved = torch.load(path, map_location="cpu", weights_only=True)
    current = optimizer.state_dict()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    shapes = {index: tuple(p.shape) for index, p in enumerate(parameters)}
    saved_shapes = {index: tuple(state["exp_avg"].shape) for index, state in saved["state"].items()}
    if saved_shapes != shapes:
        log.warning(
            "warm start: the optimizer state of %s does not fit this adapter, starts fresh", adapter.uri
        )
        return False
    optimizer.load_state_dict({**current, "state": saved["state"]})
    log.info("warm start: resumed the optimizer's moments of %s", adapter.uri)
    return True


def _lora_model(model: Any, settings: LoraSettings, init_adapter: FetchedAdapter | None) -> Any:
    """``model`` with the LoRA adapter to train: a fresh one of ``settings``, or ``init_adapter``.

    A warm start trains on from the adapter's weights (the champion's), so its rank, alpha and adapted
    modules must be the configured ones: AdapterMismatchError names both otherwise. The configured
    dropout applies either way (it shapes training, not the weights).
    """
    import copy

    from peft import PeftConfig, PeftModel, get_peft_model

    configured = lora_config(settings, model)
    if init_adapter is None:
        return get_peft_model(model, configured)
    uri, directory = init_adapter
    saved = PeftConfig.from_pretrained(str(directory))
    if saved.peft_type != "LORA":
        raise AdapterMismatchError(f"--init-adapter {uri} is a {saved.peft_type} adapter, not a LoRA adapter")
    found, wanted = (_adapted_modules(model.config, copy.deepcopy(c)) for c in (saved, configured))
    if (saved.r, saved.lora_alpha, found) != (settings.r, settings.alpha, wanted):
        raise AdapterMismatchError(
            f"--init-adapter {uri} (r={saved.r}, alpha={saved.lora_alpha}, adapts "
            f"{_describe_modules(found)}) does not match the configured lora settings (r={settings.r}, "
            f"alpha={settings.alpha}, target_modules {settings.target_modules!r}: adapts "
            f"{_describe_modules(wanted)}); configure the champion's lora settings, or init_from: base"
        )
    saved.lora_dropout = settings.dropout
    return PeftModel.from_pretrained(model, directory, is_trainable=True, config=saved)


def _adapted_modules(model_config: Any, lora: Any) -> set[str]:
    """The modules a peft ``LoraConfig`` adapts in a model of ``model_config``, as peft itself picks them
    (``all-linear`` included): applied to a copy of the model without weights, on the meta device."""
    import torch
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = get_peft_model(AutoModelForCausalLM.from_config(model_config), lora)
    return {
        name for name, module in skeleton.base_model.model.named_modules() if isinstance(module, LoraLayer)
    }


def _describe_modules(names: set[str]) -> str:
    kinds = sorted({name.rsplit(".", 1)[-1] for name in names})
    return f"{len(names)} modules ({', '.join(kinds) or 'none'})"


def _length_grouped_batches(
    examples: list[tuple[list[int], list[int]]],
    labels: Sequence[str],
    batch_size: int,
    *,
    seed: int,
    balance: float,
) -> Iterator[list[tuple[list[int], list[int]]]]:
    """Endless batches of similar-length examples, drawn label-balanced and reshuffled every epoch.

    Each epoch draws ``len(examples)`` examples in a random order, label L about
    ``count(L) ** balance`` of the time (:func:`flywheel.train.sampling.balanced_epoch`; ``labels``
    gives each example's label), sorts windows of 64 batches of that order by length, cuts them into
    batches and shuffles the batch order: padding stays small while the order stays random.
    """
    counts = sampling.label_counts(labels)
    shares = sampling.label_shares(counts, balance)
    log.info(
        "train labels (examples, expected share of an epoch at label_balance %s): %s",
        balance,
        ", ".join(f"{label} {count} ({shares[label]:.1%})" for label, count in counts.items()),
    )
    rng = random.Random(seed)  # nosec B311 # a seeded shuffle of training batches, not a secret
    window = batch_size * 64
    while True:
        order = sampling.balanced_epoch(labels, balance, rng)
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


Example = tuple[list[int], list[int]]
"""One encoded example: input ids and labels (-100 where nothing is supervised)."""


def supervised_tokens(batch: Sequence[Example]) -> int:
    """Tokens whose prediction the loss scores: labels other than -100 after each row's first token."""
    return sum(sum(1 for label in labels[1:] if label != -100) for _, labels in batch)


def _token_loss_sum(
    model: Any, inputs: dict[str, Any], weighting: OpeningWeight | None = None, **forward: Any
) -> Any:
    """Summed cross-entropy of a collated micro-batch, with logits only where a label follows.

    transformers' causal-LM loss is the cross-entropy of the logits at position t against the label at
    t + 1, over the labels that are not -100: the assistant answer's tokens, a small share of each
    sequence. So the decoder runs without its language-model head, and the head and the log-softmax
    over the vocabulary (for a small model a large share of the compute, and its logits the largest
    activation) run only on the hidden states of the positions that predict a label; the others add
    nothing to the loss. Summed, not averaged, so that micro-batches of one batch add up to the
    batch's loss exactly. With ``weighting`` the first ``weighting.tokens`` labels of each row (the
    opening of its answer) count ``weighting.weight`` times.
    """
    import torch

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.get_decoder()(input_ids=inputs["input_ids"], **forward).last_hidden_state
    targets = inputs["labels"][:, 1:]
    predicting = targets != -100
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][predicting])
    if weighting is None:
        return torch.nn.functional.cross_entropy(logits.float(), targets[predicting], reduction="sum")
    losses = torch.nn.functional.cross_entropy(logits.float(), targets[predicting], reduction="none")
    opening = (predicting.cumsum(dim=1) <= weighting.tokens)[predicting]
    return (losses * torch.where(opening, weighting.weight, 1.0)).sum()


def shared_prefix_length(batch: Sequence[Example]) -> int:
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


@dataclass(frozen=True)
class OpeningWeight:
    """The first ``tokens`` supervised tokens of each answer weigh ``weight`` in the training loss."""

    tokens: int
    weight: float


MIN_SHARED_PREFIX = 32
"""A batch shares its prefix's computation when at least this many tokens open every example."""


@dataclass(frozen=True)
class StepSettings:
    """How the trainer runs a batch: device, precision, prefix handling and the memory planner."""

    device: str
    pad_id: int
    autocast: bool
    """bf16 autocast around the forward pass (weights and gradients stay float32)."""
    share_prefix: bool
    """Run a batch's shared prefix once (off under gradient checkpointing, which drops the KV cache)."""
    prefix_gradient: bool = True
    """Back-propagate through the shared prefix (``TrainingConfig.prefix_gradient: exact``)."""
    planner: MemoryPlanner | None = None
    micro_batch_size: int | None = None
    """At most this many rows per forward/backward pass (``TrainingConfig.micro_batch_size``)."""
    opening: OpeningWeight | None = None
    """Weights of each answer's opening tokens in the training loss (not in the validation loss); None:
    every token weighs 1."""


class PhaseClock:
    """Seconds the training steps spend in each phase: ``prefix`` (a batch's shared prefix, run once),
    ``forward`` (the rows, or their suffixes, and the loss), ``backward`` (theirs), ``prefix_backward``
    (the prefix's own backward pass, under ``prefix_gradient: exact``) and ``optimizer`` (clipping, the
    AdamW step, the schedule). Measured on a CPU, where an operation has finished when its call returns;
    a GPU runs kernels asynchronously, and timing its phases would need a synchronisation at each one,
    so there ``seconds`` is None and nothing is timed."""

    PHASES = ("prefix", "forward", "backward", "prefix_backward", "optimizer")

    def __init__(self, *, enabled: bool) -> None:
        self.seconds: dict[str, float] | None = dict.fromkeys(self.PHASES, 0.0) if enabled else None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time spent inside the block to phase ``name``."""
        if self.seconds is None:
            yield
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def rounded(self) -> dict[str, float] | None:
        return None if self.seconds is None else {k: round(v, 4) for k, v in self.seconds.items()}

    def describe(self, steps: int) -> str:
        """Each phase's seconds per step and share of the timed total, e.g. ``prefix 2.10 s/step (27 %)``."""
        seconds = self.seconds or {}
        total, steps = sum(seconds.values()) or 1.0, max(steps, 1)
        return ", ".join(
            f"{name} {value / steps:.2f} s/step ({value / total:.0%})" for name, value in seconds.items()
        )


class KeptPrefix:
    """A shared prefix's keys and values, computed without gradients, kept for the batches that follow.

    Under ``prefix_gradient: none`` a prefix is an input computed with the adapter as it is: the
    batches of one optimizer step (gradient accumulation) see the same adapter, so they can share one
    computation exactly; with ``refresh_steps`` above 1 it is also kept across that many steps, so
    later batches attend to a prefix computed with an adapter up to ``refresh_steps - 1`` steps older
    (``TrainingConfig.prefix_refresh_steps``, an approximation that docs/training.md measures).
    """

    def __init__(self, refresh_steps: int) -> None:
        self.refresh_steps = refresh_steps
        self.ids: list[int] = []
        self.keys_values: list[tuple[Any, Any]] = []
        self.age = 0
        self.computed = 0
        """Times a prefix was computed (the rest of the batches reused one)."""

    def age_one_step(self) -> None:
        """The optimizer changed the adapter; a prefix ``refresh_steps`` steps old is recomputed."""
        self.age += 1

    def reusable(self, ids: list[int]) -> tuple[int, list[tuple[Any, Any]]] | None:
        """``(length, keys and values)`` of the kept prefix that ``ids`` and it open with, when it is
        young enough and that common opening has at least :data:`MIN_SHARED_PREFIX` tokens.

        Either may be the longer: a batch whose rows share more tokens runs its extra shared tokens in
        its rows' suffixes; a batch that shares fewer uses the kept keys and values cut to its length.
        """
        if not self.keys_values or self.age >= self.refresh_steps:
            return None
        length = min(len(ids), len(self.ids))
        if length < MIN_SHARED_PREFIX or ids[:length] != self.ids[:length]:
            return None
        if length == len(self.ids):
            return length, self.keys_values
        return length, [(keys[:, :, :length], values[:, :, :length]) for keys, values in self.keys_values]

    def keep(self, ids: list[int], keys_values: list[tuple[Any, Any]]) -> None:
        self.ids, self.keys_values, self.age = list(ids), keys_values, 0
        self.computed += 1


def run_batch(
    model: Any,
    batch: Sequence[Example],
    settings: StepSettings,
    *,
    backward_scale: float | None,
    clock: PhaseClock | None = None,
    kept_prefix: KeptPrefix | None = None,
) -> float:
    """The summed loss of ``batch``, computed one memory-planned micro-batch at a time.

    With ``backward_scale`` each micro-batch's summed loss, times the scale, is back-propagated as soon
    as it is computed (gradients accumulate, and the activations of one micro-batch are freed before
    the next runs); without it only the loss is computed (under ``torch.no_grad`` at the caller).

    **Shared prefix.** When the rows of a batch open with at least :data:`MIN_SHARED_PREFIX` identical
    tokens (a workload's system message and tool schemas), that prefix runs once per batch, at batch
    size 1, and each row runs only its own suffix, right-padded, with positions that continue the
    prefix, against the prefix's keys and values. Every supervised token lies in the suffix. The
    gradients still flow through the prefix (LoRA adapts its keys and values too): each micro-batch
    back-propagates into the prefix's keys and values, held as leaves, and once the last one has, the
    prefix's own backward pass runs once with the sum. Loss and gradients equal the padded batch's.
    With ``settings.prefix_gradient`` off the prefix runs without gradients: the same loss, and the
    gradient only of the suffixes' own computation (``TrainingConfig.prefix_gradient: none``).
    ``clock`` adds the seconds of each phase to its total. ``kept_prefix`` (training under
    ``prefix_gradient: none``) holds a prefix computed for an earlier batch, reused while it is young
    enough (:class:`KeptPrefix`).
    """
    import torch

    clock = clock or PhaseClock(enabled=False)
    shared = shared_prefix_length(batch) if settings.share_prefix and len(batch) > 1 else 0
    if shared < MIN_SHARED_PREFIX:
        shared = 0
    prefix = leaves = []
    prefix_backward = backward_scale is not None and settings.prefix_gradient
    if prefix_backward:
        kept_prefix = None
    reused = kept_prefix.reusable(batch[0][0][:shared]) if shared and kept_prefix is not None else None
    if reused is not None:
        shared, prefix = reused
        leaves = prefix
    elif shared:
        with clock.phase("prefix"), _autocast(settings), torch.set_grad_enabled(prefix_backward):
            prefix = _prefix_keys_values(model, batch[0][0][:shared], settings.device)
        if kept_prefix is not None:
            kept_prefix.keep(batch[0][0][:shared], prefix)
        leaves = prefix
        if prefix_backward:
            # Layers below the adapted ones give the prefix keys and values without gradients: no
            # leaf there, so the suffixes' backward pass stops at the lowest adapted layer.
            leaves = [
                (
                    keys.detach().requires_grad_(keys.requires_grad),
                    values.detach().requires_grad_(values.requires_grad),
                )
                for keys, values in prefix
            ]
    rows = min(len(batch), settings.micro_batch_size or len(batch))
    if settings.planner is not None and backward_scale is not None:
        rows = _rows_that_fit(batch, rows, shared, settings.planner)
    total = 0.0
    for start in range(0, len(batch), rows):
        chunk = batch[start : start + rows]
        watch = _MicroBatchWatch(settings.planner, chunk, shared) if backward_scale is not None else None
        with clock.phase("forward"), _autocast(settings):
            weighting = settings.opening if backward_scale is not None else None
            if shared:
                loss = _suffix_loss_sum(model, chunk, leaves, shared, settings, weighting)
            else:
                inputs = _collate(chunk, settings.pad_id, settings.device)
                loss = _token_loss_sum(model, inputs, weighting, attention_mask=inputs["attention_mask"])
        if backward_scale is not None:
            with clock.phase("backward"):
                (loss * backward_scale).backward()
        total += float(loss.detach())
        if watch is not None:
            watch.done()
    if shared and prefix_backward:
        pairs = [
            (out, leaf.grad)
            for kv, leaf_kv in zip(prefix, leaves, strict=True)
            for out, leaf in zip(kv, leaf_kv, strict=True)
        ]
        used = [(out, grad) for out, grad in pairs if grad is not None]
        with clock.phase("prefix_backward"):
            torch.autograd.backward([out for out, _ in used], [grad for _, grad in used])
    return total


def _autocast(settings: StepSettings) -> Any:
    import torch

    return torch.autocast(settings.device, dtype=torch.bfloat16, enabled=settings.autocast)


def _prefix_keys_values(model: Any, ids: list[int], device: str) -> list[tuple[Any, Any]]:
    """Keys and values (batch 1) of the prefix ``ids``, layer by layer."""
    import torch

    cache = model(
        input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1
    ).past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers]


def _suffix_loss_sum(
    model: Any,
    chunk: Sequence[Example],
    prefix: list[tuple[Any, Any]],
    shared: int,
    settings: StepSettings,
    weighting: OpeningWeight | None = None,
) -> Any:
    """Summed loss of ``chunk``'s suffixes after ``shared`` tokens whose keys and values are ``prefix``.

    With :mod:`flywheel.shared_prefix` attention the prefix is handed over at batch size 1 (its
    attention expands it to the rows as a view); otherwise its keys and values are expanded to the
    rows as a cache.
    """
    import torch
    from transformers import DynamicCache

    from flywheel.shared_prefix import ATTENTION, SharedPrefix

    inputs = _collate(
        [(ids[shared:], labels[shared:]) for ids, labels in chunk], settings.pad_id, settings.device
    )
    rows, width = inputs["input_ids"].shape
    positions = torch.arange(shared, shared + width, device=settings.device).unsqueeze(0).expand(rows, -1)
    if model.config._attn_implementation == ATTENTION:
        forward: dict[str, Any] = {
            "shared_prefix": SharedPrefix(prefix),
            "attention_mask": inputs["attention_mask"],
        }
    else:
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(prefix):
            cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), layer)
        ones = torch.ones((rows, shared), dtype=torch.long, device=settings.device)
        forward = {
            "attention_mask": torch.cat([ones, inputs["attention_mask"]], dim=1),
            "past_key_values": cache,
            "use_cache": True,
        }
    return _token_loss_sum(model, inputs, weighting, position_ids=positions, **forward)


def _row_mb(planner: MemoryPlanner, rows: Sequence[Example], shared: int) -> float:
    """The planner's estimate for one row as long as the longest of ``rows``, after ``shared`` tokens."""
    longest = max(len(ids) for ids, _ in rows) - shared
    supervised = max(sum(1 for label in labels if label != -100) for _, labels in rows)
    return planner.row_mb(longest, supervised)


def _rows_that_fit(batch: Sequence[Example], wanted: int, shared: int, planner: MemoryPlanner) -> int:
    """At most ``wanted`` rows per micro-batch, as many of the batch's longest row as fit the budget left."""
    free = planner.budget_mb - memory.in_use_mb()
    rows = planner.rows_that_fit(wanted, _row_mb(planner, batch, shared), free)
    if rows < wanted:
        log.info(
            "batch of %d rows of up to %d tokens runs as micro-batches of %d rows (%.0f MiB of the memory"
            " budget left)",
            len(batch),
            max(len(ids) for ids, _ in batch),
            rows,
            free,
        )
    return rows


class _MicroBatchWatch:
    """Measures a training micro-batch's peak memory above the resting set, to correct the planner."""

    def __init__(self, planner: MemoryPlanner | None, chunk: Sequence[Example], shared: int) -> None:
        self.planner = planner
        if planner is None:
            return
        self.estimate = len(chunk) * _row_mb(planner, chunk, shared)
        self.resting = memory.resident_mb()
        self.measured = memory.reset_peak()

    def done(self) -> None:
        if self.planner is not None and self.measured:
            self.planner.observe(self.estimate, memory.peak_resident_mb() - self.resting)


def _validation_loss(
    model: Any, examples: Sequence[Example], batch_size: int, settings: StepSettings
) -> float:
    """Mean loss per supervised token over the whole validation split."""
    import torch

    model.eval()
    total = weight = 0.0
    ordered = sorted(examples, key=lambda e: len(e[0]))
    with torch.no_grad():
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start : start + batch_size]
            if supervised_tokens(batch):
                total += run_batch(model, batch, settings, backward_scale=None)
                weight += supervised_tokens(batch)
    model.train()
    return total / weight if weight else float("nan")


def training_precision(precision: str, device: str) -> tuple[Any, bool]:
    """The dtype to load the model in and whether to run forward passes under bf16 autocast.

    A GPU trains in bf16 weights (``auto`` or ``bfloat16``). A CPU keeps float32 weights, and runs bf16
    autocast under ``bfloat16``, or under ``auto`` where it has bf16 instructions (avx512_bf16, AMX):
    without them bf16 is emulated and slower than float32.
    """
    import torch

    if precision == "float32":
        return torch.float32, False
    if device == "cuda":
        return torch.bfloat16, False
    if precision == "bfloat16":
        return torch.float32, True
    return torch.float32, cpu_has_bf16()


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (avx512_bf16, AMX): without them bf16 is emulated."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def memory_planner(model: Any, config: TrainingConfig, device: str, dtype: Any) -> MemoryPlanner | None:
    """The CPU job's :class:`~flywheel.train.memory.MemoryPlanner` (a GPU job's batches must fit the GPU)."""
    if device != "cpu":
        return None
    budget = config.memory_budget_mb or memory.available_memory_mb() * memory.BUDGET_SHARE
    log.info(
        "memory budget %.0f MiB (%s)",
        budget,
        "configured" if config.memory_budget_mb else "85% of the machine's",
    )
    return MemoryPlanner.for_model(model.config, budget, element_bytes=dtype.itemsize)


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process in MiB: allocated CUDA memory, or the resident set on CPU (its
    high-water mark over the whole job, though the memory planner resets it before each micro-batch)."""
    if device == "cuda":
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(memory.process_peak_mb(), 1)


def _publish(
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    result: TrainResult,
    curve: list[dict[str, Any]],
    output_uri: str,
) -> None:
    """Write adapter (with the optimizer's state, for a later warm start), tokenizer, loss curve and
    result.json; result.json last, as the completion marker."""
    import fsspec
    import torch

    fs, root = fsspec.core.url_to_fs(output_uri, **storage_options_from_env())
    with tempfile.TemporaryDirectory(prefix="flywheel-train-") as tmp:
        local = Path(tmp)
        model.save_pretrained(local / artifacts.ADAPTER)
        tokenizer.save_pretrained(local / artifacts.ADAPTER)
        torch.save(optimizer.state_dict(), local / artifacts.ADAPTER / artifacts.OPTIMIZER_STATE)
        (local / artifacts.LOSS_CURVE).write_text(json.dumps(curve, indent=1))
        fs.makedirs(root, exist_ok=True)
        for path in sorted(local.rglob("*")):
            if path.is_file():
                target = artifacts.job_uri(root, path.relative_to(local).as_posix())
                fs.makedirs(posixpath.dirname(target), exist_ok=True)
                fs.put_file(str(path), target)
    write_result(output_uri, asdict(result), dataset_uri=result.dataset)
