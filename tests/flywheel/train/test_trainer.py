"""The LoRA trainer on CPU: a tiny Llama through the same code path as real checkpoints."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flywheel.config import TrainingConfig, load_config
from flywheel.dataset.build import build_dataset
from flywheel.demo.seed import write_raw_partition
from flywheel.jobs import EXIT_CONFIG
from flywheel.storage import ArtifactStore
from flywheel.train.models import SMOLLM2
from flywheel.train.trainer import _collate, _length_grouped_batches, train, training_precision
from flywheel.validate.day import validate_day

START = datetime(2026, 11, 20, 2, tzinfo=UTC)
FLYWHEEL = str(Path(sys.executable).with_name("flywheel"))


@pytest.fixture(scope="module")
def dataset_uri(tmp_path_factory) -> str:
    """A real dataset built by the pipeline from one day of router traffic."""
    root = tmp_path_factory.mktemp("dataset")
    workload = load_config().workload("customer_support_router")
    store = ArtifactStore(str(root / "artifacts"))
    write_raw_partition(store, workload, start=START, end=START + timedelta(days=1), count=200, seed=4)
    validate_day(
        store,
        workload_id=workload.workload_id,
        start=START,
        end=START + timedelta(days=1),
        rules=workload.data_quality,
        build_docs=False,
    )
    return build_dataset(store, workload, START.date()).uri


def test_training_reduces_validation_loss_and_writes_every_output(dataset_uri, tiny_model, tmp_path):
    # Short sequences keep the test fast: the prompt is cut from the left, the answer is always kept.
    config = TrainingConfig(
        max_steps=15,
        batch_size=4,
        learning_rate=5e-3,
        eval_every_steps=5,
        early_stopping_patience=None,
        max_seq_length=256,
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
    )
    output = tmp_path / "out"

    result = train(dataset_uri, tiny_model, config, str(output))

    curve = json.loads((output / "loss_curve.json").read_text())
    evaluated = [p["validation_loss"] for p in curve if "validation_loss" in p]
    assert len(evaluated) == 3
    assert evaluated[-1] < evaluated[0]
    assert result.best_validation_loss == min(evaluated)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"):
        assert (output / "adapter" / name).exists(), name
    written = json.loads((output / "result.json").read_text())
    assert written["steps"] == 15
    assert written["tokens_seen"] > 0
    assert written["tokens_per_s"] > 0
    assert 0 <= written["padding_share"] < 0.35
    assert written["truncated_examples"] > 0
    assert written["trainable_parameters"] > 0
    assert sum(written["train_labels"].values()) == written["train_examples"]
    assert "no_call" in written["train_labels"]
    # precision auto: bf16 autocast where the CPU has bf16 instructions (some of these machines do).
    autocast = training_precision("auto", "cpu")[1]
    assert written["dtype"] == ("float32 (bf16 autocast)" if autocast else "float32")


@pytest.mark.parametrize("prefix_gradient", ["exact", "none"])
def test_a_cpu_job_reports_where_its_training_time_went(dataset_uri, tiny_model, tmp_path, prefix_gradient):
    config = TrainingConfig(
        max_steps=2,
        batch_size=4,
        max_seq_length=2048,  # whole prompts: every batch shares the router's system prompt and tools
        eval_every_steps=1000,
        max_validation_examples=2,
        prefix_gradient=prefix_gradient,
        lora={"r": 4, "alpha": 8, "dropout": 0.0},
    )
    output = tmp_path / "out"

    result = train(dataset_uri, tiny_model, config, str(output))

    split = result.time_split
    assert list(split) == ["prefix", "forward", "backward", "prefix_backward", "optimizer"]
    assert all(split[phase] > 0 for phase in ("prefix", "forward", "backward", "optimizer"))
    assert (split["prefix_backward"] > 0) == (prefix_gradient == "exact")
    # Only the training steps are timed, and within them only these phases.
    assert sum(split.values()) <= result.tokens_seen / (result.tokens_per_s - 0.05)  # tokens/s is rounded
    assert json.loads((output / "result.json").read_text())["time_split"] == split


def test_batched_loss_equals_token_weighted_per_example_loss(tiny_model, dataset_uri):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flywheel.train.formatting import encode_for_training

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    lines = (Path(dataset_uri.removeprefix("file://")) / "train.jsonl").read_text().splitlines()[:4]
    examples = []
    for line in lines:
        record = json.loads(line)
        encoded = encode_for_training(tokenizer, record["messages"], record["tools"], max_length=1024)
        examples.append((encoded.input_ids, encoded.labels))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    with torch.no_grad():
        batched = float(model(**_collate(examples, pad, "cpu")).loss)
        total = weight = 0.0
        for example in examples:
            inputs = _collate([example], pad, "cpu")
            supervised = int((inputs["labels"][:, 1:] != -100).sum())
            total += float(model(**inputs).loss) * supervised
            weight += supervised

    # Padding never leaks into another example's tokens: the batch is the sum of its parts.
    assert batched == pytest.approx(total / weight, rel=1e-4)


def test_length_grouping_cuts_padding():
    import random

    rng = random.Random(0)
    examples = [([1] * rng.randint(50, 2000), [1]) for _ in range(512)]
    labels = [rng.choice(["common"] * 12 + ["rare"]) for _ in examples]

    def padding(batches) -> float:
        padded = real = 0
        for _ in range(64):
            batch = next(batches)
            width = max(len(ids) for ids, _ in batch)
            real += sum(len(ids) for ids, _ in batch)
            padded += width * len(batch)
        return 1 - real / padded

    def random_batches():
        while True:
            yield rng.sample(examples, 8)

    grouped = padding(_length_grouped_batches(examples, labels, 8, seed=0, balance=0.5))
    assert grouped < 0.05
    assert grouped < padding(random_batches()) / 5


def test_a_bad_dataset_fails_with_a_config_exit_code_and_error_json(tiny_model, tmp_path):
    output = tmp_path / "out"
    process = subprocess.run(
        [
            FLYWHEEL,
            "train",
            "--dataset",
            str(tmp_path / "missing"),
            "--base-model",
            tiny_model,
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
    )

    assert process.returncode == EXIT_CONFIG
    error = json.loads((output / "error.json").read_text())
    assert error["error"] == "JobInputError"
    assert error["retryable"] is False
    assert "train.jsonl does not exist" in error["message"]


@pytest.mark.slow
def test_smollm2_fine_tunes_on_cpu(dataset_uri, tmp_path):
    # A couple of dozen sequences: minutes on 2 CPU cores for a 135M-parameter model.
    config = TrainingConfig(
        max_steps=12,
        batch_size=2,
        learning_rate=3e-4,
        eval_every_steps=6,
        max_seq_length=384,
        log_every_steps=2,
    )

    result = train(dataset_uri, SMOLLM2, config, str(tmp_path / "smollm2"))

    curve = json.loads((tmp_path / "smollm2" / "loss_curve.json").read_text())
    evaluated = [p["validation_loss"] for p in curve if "validation_loss" in p]
    assert evaluated[-1] < evaluated[0]
    assert result.best_validation_loss == min(evaluated)
    assert (tmp_path / "smollm2" / "adapter" / "adapter_model.safetensors").exists()


def test_loss_with_logits_only_where_labels_are_equals_the_models_loss(tiny_model):
    # train() skips the vocabulary projection on prompt positions: the loss must not change.
    import torch
    from transformers import AutoModelForCausalLM

    from flywheel.train.trainer import _collate, _token_loss_sum, supervised_tokens

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    batch = _random_batch(random.Random(0), prefix=[], lengths=(40, 75, 120))
    inputs = _collate(batch, 0, "cpu")

    with torch.no_grad():
        summed = float(_token_loss_sum(model, inputs, attention_mask=inputs["attention_mask"]))
        assert summed / supervised_tokens(batch) == pytest.approx(float(model(**inputs).loss), rel=1e-5)


def _random_batch(rng: random.Random, prefix: list[int], lengths: tuple[int, ...]) -> list:
    """Rows of ``prefix`` plus random tokens, each supervised on its last 2 to 9 tokens."""
    batch = []
    for length in lengths:
        ids = prefix + [rng.randrange(1000) for _ in range(length)]
        answer = rng.randint(2, 9)
        batch.append((ids, [-100] * (len(ids) - answer) + ids[len(ids) - answer :]))
    return batch


def _lora_tiny(tiny_model, settings):
    """The tiny model with a LoRA adapter whose B matrices are not zero (so it changes keys and values)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from flywheel.shared_prefix import use_shared_prefix_attention
    from flywheel.train.trainer import lora_config

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert use_shared_prefix_attention(base)  # as train() runs it
    model = get_peft_model(base, lora_config(settings, base))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    return model.eval()


@pytest.fixture
def lora_tiny(tiny_model):
    from flywheel.config import LoraSettings

    return _lora_tiny(tiny_model, LoraSettings(dropout=0.0))


def _loss_and_grads(
    model, batch, *, share: bool, planner=None, prefix_gradient: bool = True, kept_prefix=None
):
    """run_batch's loss per supervised token and the LoRA gradients it back-propagates."""
    from flywheel.train.trainer import StepSettings, run_batch, supervised_tokens

    settings = StepSettings(
        device="cpu",
        pad_id=0,
        autocast=False,
        share_prefix=share,
        planner=planner,
        prefix_gradient=prefix_gradient,
    )
    model.zero_grad()
    scale = 1.0 / supervised_tokens(batch)
    loss = run_batch(model, batch, settings, backward_scale=scale, kept_prefix=kept_prefix) * scale
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(first, second) -> None:
    import torch

    assert first[0] == pytest.approx(second[0], rel=1e-5)
    for name, grad in second[1].items():
        assert torch.allclose(first[1][name], grad, rtol=1e-3, atol=1e-6), name


def test_shared_prefix_loss_and_gradients_equal_the_whole_batch(lora_tiny):
    # A router batch opens with the same system message and tool schemas: the trainer runs them once.
    from flywheel.train.trainer import shared_prefix_length

    rng = random.Random(0)
    batch = _random_batch(rng, [rng.randrange(1000) for _ in range(60)], (12, 30, 45))
    assert shared_prefix_length(batch) == 60

    whole = _loss_and_grads(lora_tiny, batch, share=False)
    _assert_same(_loss_and_grads(lora_tiny, batch, share=True), whole)


def test_a_training_pass_attends_over_the_shared_prefix_through_sdpas_fused_kernel(lora_tiny, monkeypatch):
    # Shared-prefix attention keeps no attention weights in training: every pass of several tokens per
    # row goes to SDPA over the prefix expanded to the rows (a BFCL batch: a short shared system
    # message, then each request's own tools and question, longer than the prefix).
    import flywheel.shared_prefix

    rng = random.Random(3)
    batch = _random_batch(rng, [rng.randrange(1000) for _ in range(40)], (60, 90, 120))
    keys_seen = []
    sdpa = flywheel.shared_prefix.sdpa_attention_forward

    def recorded(module, query, key, *args, **kwargs):
        keys_seen.append((query.shape[2], key.shape[2]))
        return sdpa(module, query, key, *args, **kwargs)

    monkeypatch.setattr(flywheel.shared_prefix, "sdpa_attention_forward", recorded)

    shared = _loss_and_grads(lora_tiny, batch, share=True)

    layers = lora_tiny.config.num_hidden_layers
    # The prefix alone (40 tokens), then the rows' 120 own tokens over prefix and own keys.
    assert keys_seen[:layers] == [(40, 40)] * layers
    assert keys_seen[layers:] == [(120, 160)] * layers
    _assert_same(shared, _loss_and_grads(lora_tiny, batch, share=False))


def test_a_prefix_without_gradient_gives_the_same_loss_and_the_suffixes_own_gradient(lora_tiny):
    # prefix_gradient: none. The reference runs each row on its own through transformers' KV cache,
    # after the prefix computed under no_grad: the gradient every row's suffix gives by itself.
    import copy

    import torch

    rng = random.Random(1)
    prefix = [rng.randrange(1000) for _ in range(48)]
    batch = _random_batch(rng, prefix, (10, 25, 40))
    scale = 1.0 / sum(1 for _, labels in batch for label in labels if label != -100)

    lora_tiny.zero_grad()
    with torch.no_grad():
        cache = lora_tiny(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
    total = 0.0
    for ids, labels in batch:
        suffix = torch.tensor([ids[len(prefix) :]])
        positions = torch.arange(len(prefix), len(ids)).unsqueeze(0)
        logits = lora_tiny(
            input_ids=suffix, past_key_values=copy.deepcopy(cache), position_ids=positions
        ).logits
        targets = torch.tensor([*labels[len(prefix) + 1 :], -100])
        loss = torch.nn.functional.cross_entropy(logits[0], targets, ignore_index=-100, reduction="sum")
        (loss * scale).backward()
        total += float(loss.detach())
    reference = (
        total * scale,
        {n: p.grad.clone() for n, p in lora_tiny.named_parameters() if p.requires_grad},
    )

    approximate = _loss_and_grads(lora_tiny, batch, share=True, prefix_gradient=False)
    _assert_same(approximate, reference)
    # The loss is the exact one; the gradient lacks only the prefix's share, which is not zero here.
    exact = _loss_and_grads(lora_tiny, batch, share=True)
    assert approximate[0] == pytest.approx(exact[0], rel=1e-5)
    assert any(not torch.allclose(approximate[1][n], exact[1][n], atol=1e-6) for n in exact[1])


def test_a_kept_prefix_serves_the_batches_of_a_step_exactly_and_is_recomputed_when_too_old(lora_tiny):
    # prefix_gradient: none. Batches of one optimizer step see one adapter, so they share one prefix
    # computation exactly; prefix_refresh_steps N keeps it for N steps, then computes it again.
    import torch

    from flywheel.train.trainer import KeptPrefix

    rng = random.Random(4)
    prefix = [rng.randrange(1000) for _ in range(48)]
    first = _random_batch(rng, prefix, (10, 25))
    second = _random_batch(rng, [*prefix, 7, 8, 9], (12, 30))  # its rows share 3 more tokens
    third = _random_batch(rng, prefix[:40], (20, 15))  # its rows share 8 fewer
    kept = KeptPrefix(refresh_steps=2)

    for batch in (first, third):
        reused = _loss_and_grads(lora_tiny, batch, share=True, prefix_gradient=False, kept_prefix=kept)
        _assert_same(reused, _loss_and_grads(lora_tiny, batch, share=True, prefix_gradient=False))
    # The batch that shares 3 more tokens runs them in its rows' suffixes, with gradients: the same
    # loss, and a gradient with those tokens' share.
    reused = _loss_and_grads(lora_tiny, second, share=True, prefix_gradient=False, kept_prefix=kept)
    assert reused[0] == pytest.approx(_loss_and_grads(lora_tiny, second, share=True)[0], rel=1e-5)
    assert kept.computed == 1
    assert kept.ids == prefix

    # The adapter changes (an optimizer step): within refresh_steps the batches still attend to the
    # prefix computed before it, and so differ from a fresh one; after refresh_steps it is recomputed.
    with torch.no_grad():
        for name, parameter in lora_tiny.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05)
    kept.age_one_step()
    stale = _loss_and_grads(lora_tiny, first, share=True, prefix_gradient=False, kept_prefix=kept)
    fresh = _loss_and_grads(lora_tiny, first, share=True, prefix_gradient=False)
    assert kept.computed == 1
    assert stale[0] != pytest.approx(fresh[0], rel=1e-4)
    kept.age_one_step()
    _assert_same(
        _loss_and_grads(lora_tiny, first, share=True, prefix_gradient=False, kept_prefix=kept), fresh
    )
    assert kept.computed == 2

    # Another prefix (another workload's system message) is computed, never cut from the kept one.
    other = _random_batch(rng, [rng.randrange(1000) for _ in range(48)], (10, 20))
    _assert_same(
        _loss_and_grads(lora_tiny, other, share=True, prefix_gradient=False, kept_prefix=kept),
        _loss_and_grads(lora_tiny, other, share=True, prefix_gradient=False),
    )
    assert kept.computed == 3


def test_the_opening_tokens_of_each_answer_weigh_more_in_the_training_loss_only(lora_tiny):
    # opening_tokens / opening_weight: the call-or-not decision and the tool's name open an answer.
    import torch

    from flywheel.train.trainer import OpeningWeight, StepSettings, run_batch

    rng = random.Random(5)
    batch = _random_batch(rng, [rng.randrange(1000) for _ in range(40)], (10, 20, 30))
    weighted = plain = 0.0
    with torch.no_grad():
        for ids, labels in batch:
            logits = lora_tiny(input_ids=torch.tensor([ids])).logits[0, :-1]
            targets = torch.tensor(labels[1:])
            losses = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="none")
            weights = torch.ones_like(losses)
            weights[(targets != -100).nonzero().flatten()[:2]] = 3.0
            weighted += float((losses * weights).sum())
            plain += float(losses.sum())

    for share in (True, False):
        settings = StepSettings(
            device="cpu", pad_id=0, autocast=False, share_prefix=share, opening=OpeningWeight(2, 3.0)
        )
        lora_tiny.zero_grad()
        assert run_batch(lora_tiny, batch, settings, backward_scale=1.0) == pytest.approx(weighted, rel=1e-5)
        with torch.no_grad():  # a validation pass: the plain loss
            assert run_batch(lora_tiny, batch, settings, backward_scale=None) == pytest.approx(
                plain, rel=1e-5
            )


def test_a_prefix_kept_across_steps_needs_the_prefix_without_gradient():
    with pytest.raises(ValueError, match="prefix_refresh_steps: above 1 needs prefix_gradient 'none'"):
        TrainingConfig(prefix_refresh_steps=4)
    assert TrainingConfig(prefix_refresh_steps=4, prefix_gradient="none").prefix_refresh_steps == 4


def test_lora_on_the_top_layers_adapts_only_them_with_the_whole_batchs_gradients(tiny_model):
    # Below the adapted layers the prefix's keys and values need no gradient: the backward pass stops
    # at the lowest adapted layer, and the shared prefix still gives the whole batch's gradients.
    import re

    from flywheel.config import LoraSettings

    model = _lora_tiny(tiny_model, LoraSettings(dropout=0.0, top_layers=1))
    last = model.config.num_hidden_layers - 1
    adapted = {
        int(re.search(r"layers\.(\d+)\.", n).group(1)) for n, p in model.named_parameters() if p.requires_grad
    }
    assert adapted == {last}
    kinds = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert kinds == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }  # all-linear

    rng = random.Random(1)
    batch = _random_batch(rng, [rng.randrange(1000) for _ in range(50)], (8, 20, 33))
    _assert_same(_loss_and_grads(model, batch, share=True), _loss_and_grads(model, batch, share=False))


def test_micro_batches_give_the_whole_batchs_loss_and_gradients(lora_tiny):
    from flywheel.train.memory import MemoryPlanner

    rng = random.Random(2)
    batch = _random_batch(rng, [rng.randrange(1000) for _ in range(40)], (10, 20, 30, 40))
    # A budget below what the process already holds: every row becomes its own micro-batch.
    planner = MemoryPlanner(budget_mb=1.0, token_mb=1.0, logit_mb=1.0)

    # The shared prefix runs once for all four micro-batches; its gradients are still the whole batch's.
    split = _loss_and_grads(lora_tiny, batch, share=True, planner=planner)
    _assert_same(split, _loss_and_grads(lora_tiny, batch, share=False))
    unshared = _random_batch(rng, [], (10, 20, 30, 40))
    _assert_same(
        _loss_and_grads(lora_tiny, unshared, share=False, planner=planner),
        _loss_and_grads(lora_tiny, unshared, share=False),
    )


def test_shared_prefix_stops_before_the_first_supervised_token():
    from flywheel.train.trainer import shared_prefix_length

    ids = [5, 6, 7, 8, 9]
    # The token before the first label must stay in each row's suffix: it predicts that label.
    assert shared_prefix_length([(ids, [-100, -100, -100, 8, 9]), (ids, [-100, -100, -100, 8, 9])]) == 2
    assert shared_prefix_length([([1, 2, 3, 4], [-100] * 3 + [4]), ([1, 2, 9, 4], [-100] * 3 + [4])]) == 2


def test_a_tight_memory_budget_trains_in_micro_batches_of_the_same_batch(
    dataset_uri, tiny_model, tmp_path, caplog
):
    config = TrainingConfig(
        max_steps=2,
        batch_size=4,
        max_seq_length=256,
        eval_every_steps=100,
        memory_budget_mb=256,  # below what the process already holds: one row per pass
    )

    with caplog.at_level("INFO", logger="flywheel.train.trainer"):
        result = train(dataset_uri, tiny_model, config, str(tmp_path / "out"))

    assert result.steps == 2
    assert result.peak_memory_mb > 0
    assert "runs as micro-batches of 1 rows" in caplog.text


@pytest.mark.parametrize(("precision", "autocast"), [("float32", False), ("bfloat16", True), ("auto", None)])
def test_precision_on_a_cpu(precision, autocast):
    import torch

    dtype, uses_autocast = training_precision(precision, "cpu")
    assert dtype == torch.float32  # weights and gradients stay float32 on a CPU
    if autocast is None:  # auto: bf16 only where the CPU has bf16 instructions
        autocast = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert uses_autocast is autocast


def test_bf16_autocast_gives_the_float32_loss_within_bf16_precision(lora_tiny):
    # Where the CPU has bf16 instructions, `auto` trains under autocast: same loss up to bf16 rounding.
    from flywheel.train.trainer import StepSettings, run_batch, supervised_tokens

    rng = random.Random(5)
    batch = _random_batch(rng, [rng.randrange(1000) for _ in range(40)], (10, 20, 30))
    losses = {}
    for autocast in (False, True):
        settings = StepSettings(device="cpu", pad_id=0, autocast=autocast, share_prefix=True)
        losses[autocast] = run_batch(lora_tiny, batch, settings, backward_scale=None) / supervised_tokens(
            batch
        )
    assert losses[True] == pytest.approx(losses[False], rel=0.02)


@pytest.mark.parametrize("ratio", [1.0, 16.0])
def test_loraplus_trains_the_b_matrices_at_its_ratio_of_the_learning_rate(lora_tiny, ratio):
    from flywheel.train.trainer import _optimizer

    config = TrainingConfig(learning_rate=1e-3, lora={"loraplus_lr_ratio": ratio})
    optimizer = _optimizer(lora_tiny, config, config.learning_rate)

    names = {id(p): n for n, p in lora_tiny.named_parameters()}
    rates = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
    trainable = {n for n, p in lora_tiny.named_parameters() if p.requires_grad}
    assert set(rates) == trainable  # every adapter weight is trained, nothing else
    assert {rate for name, rate in rates.items() if "lora_A" in name} == {1e-3}
    assert [rate for name, rate in rates.items() if "lora_B" in name] == pytest.approx(
        [1e-3 * ratio] * sum("lora_B" in name for name in rates)
    )
