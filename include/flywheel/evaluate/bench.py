"""The evaluation benchmark (``flywheel bench eval``): our evaluator against one-at-a-time ``generate``.

One job: measure how many examples per second :class:`~flywheel.evaluate.local.LocalGenerator`
answers compared with the loop most people would write first, and check that both give the same
answers:

* **ours**: ``LocalGenerator.generate_ids``: prompts sorted by token ids, batches, the shared
  system+tools prefix computed once and its keys and values reused, preallocated KV buffers, rows
  dropped from the batch as they finish;
* **baseline**: ``model.generate`` on one prompt at a time, greedy, the same ``max_new_tokens`` and
  stop tokens, transformers' default cache.

Same process, same model object, same prompt token ids (rendered and tokenized exactly as training
does), greedy decoding on both sides; each side runs once after a short warm-up. ``speedup`` is ours
examples/s over baseline examples/s. ``tool_call_agreement`` is the share of examples whose parsed
tool calls (or plain answer) are identical on both sides; ``text_agreement`` the share of identical
raw texts (batched float arithmetic may differ in the last bits, which can flip a near-tie token).
"""

from __future__ import annotations

import time
from typing import Any

from flywheel.config import GenerationConfig
from flywheel.evaluate.examples import load_examples
from flywheel.evaluate.generation import AnswerLimits, Prompt

DEFAULT_EXAMPLES = 32
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_BATCH_SIZE = 8


def bench_eval(
    model: str,
    dataset: str,
    *,
    adapter: str | None = None,
    examples: int = DEFAULT_EXAMPLES,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """Time both sides on the first ``examples`` evaluation examples of ``dataset``, with the model's
    weights in ``precision`` (``GenerationConfig.precision``); return the figures."""
    import torch

    from flywheel.bench import peak_rss_mb
    from flywheel.evaluate.local import LocalGenerator
    from flywheel.evaluate.parsing import parse_text

    generation = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, precision=precision)
    generator = LocalGenerator(model, generation, adapter=adapter)
    chosen = load_examples(dataset, max_examples=examples, include_golden=False)
    prompts = [generator.encode(Prompt(e.messages, e.tools)) for e in chosen]
    _say(quiet, f"{len(prompts)} prompts, {sum(map(len, prompts)) / len(prompts):.0f} tokens on average")

    generator.generate_ids(prompts[:2], AnswerLimits(2))  # warm-up: first calls allocate and plan
    _baseline(generator, prompts[:1], 2)

    generator.reset_prefix_cache()  # the warm-up's prefix must not make the timed run look faster
    computed_before = generator.prefix_tokens_computed
    started = time.perf_counter()
    ours = generator.generate_ids(prompts)
    ours_seconds = time.perf_counter() - started
    _say(quiet, f"ours: {ours_seconds:.1f} s")
    started = time.perf_counter()
    baseline = _baseline(generator, prompts, max_new_tokens)
    baseline_seconds = time.perf_counter() - started
    _say(quiet, f"baseline: {baseline_seconds:.1f} s")

    ours_calls = [parse_text(g.text or "").tool_calls for g in ours]
    baseline_calls = [parse_text(text).tool_calls for text in baseline]
    return {
        "model": model,
        "adapter": adapter,
        "dataset": dataset,
        "device": generator.device,
        "dtype": str(next(generator.model.parameters()).dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "examples": len(prompts),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1),
        "prompt_tokens_computed_for_prefixes": generator.prefix_tokens_computed - computed_before,
        "ours": _side(ours_seconds, len(prompts), sum(g.tokens_out for g in ours)),
        "baseline": _side(baseline_seconds, len(prompts), None),
        "speedup": round(baseline_seconds / ours_seconds, 2),
        "tool_call_agreement": round(
            _share(a == b for a, b in zip(ours_calls, baseline_calls, strict=True)), 4
        ),
        "text_agreement": round(_share(g.text == t for g, t in zip(ours, baseline, strict=True)), 4),
        "peak_rss_mb": peak_rss_mb(),
    }


def summarize(result: dict[str, Any]) -> str:
    """A human-readable summary of :func:`bench_eval`'s result."""
    return (
        f"{result['examples']} examples of {result['dataset']} on {result['device']} ({result['dtype']}): "
        f"ours {result['ours']['examples_per_s']} examples/s, baseline "
        f"{result['baseline']['examples_per_s']} examples/s, speedup {result['speedup']}x; "
        f"tool-call agreement {result['tool_call_agreement']:.1%}, text agreement "
        f"{result['text_agreement']:.1%}"
    )


def _baseline(generator: Any, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """One prompt at a time with plain ``model.generate``: greedy, the same stop tokens."""
    import torch

    texts = []
    stop = generator.stop_ids
    with torch.inference_mode():
        for ids in prompts:
            output = generator.model.generate(
                input_ids=torch.tensor([ids], device=generator.device),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=generator.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=generator.tokenizer.pad_token_id or stop[0],
            )
            tokens = [t for t in output[0, len(ids) :].tolist() if t not in stop]
            texts.append(generator.tokenizer.decode(tokens, skip_special_tokens=False))
    return texts


def _side(seconds: float, examples: int, tokens_out: int | None) -> dict[str, Any]:
    side: dict[str, Any] = {"seconds": round(seconds, 2), "examples_per_s": round(examples / seconds, 4)}
    if tokens_out is not None:
        side["tokens_out"] = tokens_out
    return side


def _share(flags: Any) -> float:
    values = list(flags)
    return sum(values) / len(values) if values else 0.0


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)
