"""Local transformers generation for evaluation: batched greedy decoding reusing the shared prefix.

In a workload's evaluation set most of every prompt is the same: the system message and the tool
schemas come first and only the user's request differs. :class:`LocalGenerator` therefore

1. tokenizes every prompt exactly as training does (:func:`flywheel.train.formatting.encode_prompt`);
2. sorts the prompts by their token ids, so neighbours share the longest prefixes, then by length
   within windows of a few batches (:func:`batch_order`), and cuts the order into batches;
3. for each batch, runs the batch's longest common token prefix through the model once (and only the
   part that extends the previous batch's prefix, which it keeps), copies those keys and values to
   every row, and runs only each row's own suffix: ``[prefix][padding][suffix]``, with position ids
   that skip the padding, so each row sees exactly the positions it would see alone;
4. decodes greedily (or samples, at a temperature above 0) with the KV cache, dropping rows from the
   batch as they finish: at a stop token, at the token cap (``finish_reason`` ``length``: the answer
   is marked truncated), or, with ``stop_after_tool_call``, as soon as the row's text completes a
   ``</tool_call>`` block (:class:`ToolCallEnd`).

The shared prefix is where most of the compute of a small model's evaluation goes (a router prompt is
about 1,200 tokens of system text and schemas around a 20-token request); computing it once per
batch group instead of once per example is what makes this evaluator fast on CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from flywheel.config import GenerationConfig
from flywheel.evaluate.generation import TRUNCATED, AnswerLimits, Generation, Prompt
from flywheel.shared_prefix import SharedPrefix, use_shared_prefix_attention
from flywheel.train import memory
from flywheel.train.formatting import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

log = logging.getLogger(__name__)


def generation_dtype(precision: str, device: str) -> torch.dtype:
    """The weights' dtype for local generation (``GenerationConfig.precision``).

    bf16 on a GPU, and on a CPU under ``bfloat16`` or, under ``auto``, where it has bf16 instructions
    (the precision training's autocast runs in there). On a CPU the weights themselves are cast: a
    decoding step is too small a pass for autocast's per-call weight casts to pay.
    """
    from flywheel.train.trainer import cpu_has_bf16

    if precision == "float32":
        return torch.float32
    if device == "cuda" or precision == "bfloat16" or cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


class LocalGenerator:
    """Answers prompts with a local causal LM (a base model, with its LoRA adapter merged when given)."""

    def __init__(
        self,
        base_model: str,
        generation: GenerationConfig,
        *,
        adapter: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from flywheel.train.models import default_cache_dir, fetch_adapter, resolve_base_model

        self.generation = generation
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = generation_dtype(generation.precision, self.device)
        model_dir = resolve_base_model(base_model, default_cache_dir(), storage_options=storage_options)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # A CPU merges the adapter in float32 and then casts; a GPU loads and merges in bf16 directly.
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=self.dtype if self.device == "cuda" else torch.float32
        )
        if adapter is not None:
            from peft import PeftModel

            with fetch_adapter(adapter, storage_options=storage_options) as adapter_dir:
                # Merged once: evaluation then runs at the base model's speed.
                model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        self.model = model.to(self.device, self.dtype).eval()
        log.info("generating on %s in %s", self.device, str(self.dtype).removeprefix("torch."))
        if self.device == "cpu":
            # Each decoding step allocates and frees the same large blocks: keep them in the heap
            # instead of faulting fresh pages in every step (flywheel.train.memory).
            memory.keep_freed_memory()
        self.shared_prefix_attention = use_shared_prefix_attention(self.model)
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)
        self.tool_call_end = ToolCallEnd(self.tokenizer)
        self._prefix_ids: list[int] = []
        self._prefix_kv: list[tuple[Any, Any]] = []
        self.prefix_tokens_computed = 0
        """Prefix tokens run through the model so far (the rest of each prefix came from the cache)."""

    def reset_prefix_cache(self) -> None:
        """Forget the kept prefix: the next batch computes its prefix from scratch (for fair timing)."""
        self._prefix_ids, self._prefix_kv = [], []

    def encode(self, prompt: Prompt) -> list[int]:
        """The prompt's token ids, exactly as training renders and tokenizes a prompt."""
        from flywheel.train.formatting import encode_prompt

        return encode_prompt(self.tokenizer, prompt.messages, prompt.tools)

    def generate(self, prompts: list[Prompt], limits: AnswerLimits | None = None) -> list[Generation]:
        """Answer every prompt (in order) within ``limits`` (None: those the settings fix)."""
        return self.generate_ids([self.encode(prompt) for prompt in prompts], limits)

    def generate_ids(
        self, prompts: Sequence[list[int]], limits: AnswerLimits | None = None
    ) -> list[Generation]:
        """Answer prompts given as token ids (in order), batched by shared prefix, within ``limits``
        (None: :meth:`AnswerLimits.of` the settings)."""
        limits = limits or AnswerLimits.of(self.generation)
        results: list[Generation | None] = [None] * len(prompts)
        size = self.generation.batch_size
        order = batch_order(prompts, size)
        started = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(order), size):
                batch = order[start : start + size]
                answers = self._generate_batch([prompts[i] for i in batch], limits)
                for index, generation in zip(batch, answers, strict=True):
                    results[index] = generation
                done = min(start + size, len(order))
                if done == len(order) or (done // size) % 10 == 0:
                    elapsed = time.perf_counter() - started
                    log.info("generated %d/%d answers (%.2f examples/s)", done, len(order), done / elapsed)
        return [r for r in results if r is not None]

    def _generate_batch(self, rows: list[list[int]], limits: AnswerLimits) -> list[Generation]:
        max_new_tokens = limits.max_new_tokens
        tool_call_end = self.tool_call_end if limits.stop_after_tool_call else None
        started = time.perf_counter()
        shared = common_prefix_length(rows) if self.generation.prefix_cache else 0
        shared = min(shared, min(len(r) for r in rows) - 1)  # every row keeps a token to run
        prefix = self._prefix(rows[0][:shared]) if shared > 0 else []
        # With shared-prefix attention the cache holds only each row's own tokens; the prefix's keys and
        # values stay at batch size 1. Otherwise they are copied to every row of the cache.
        separate = bool(prefix) and self.shared_prefix_attention
        capacity = max(len(r) for r in rows) - (shared if separate else 0) + max_new_tokens
        cache = self._new_cache(capacity)
        forward: dict[str, Any] = {"shared_prefix": SharedPrefix(prefix)} if separate else {}
        if prefix and not separate:
            for layer, (keys, values) in enumerate(prefix):
                cache.update(keys.expand(len(rows), -1, -1, -1), values.expand(len(rows), -1, -1, -1), layer)
        suffixes = [r[shared:] for r in rows]
        width = max(len(s) for s in suffixes)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        suffix_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, suffix in enumerate(suffixes):
            input_ids[row, width - len(suffix) :] = torch.tensor(suffix)
            suffix_mask[row, width - len(suffix) :] = 1
        attention = suffix_mask
        if not separate:
            attention = torch.cat([torch.ones((len(rows), shared), dtype=torch.long), suffix_mask], dim=1)
        # Positions continue the prefix and skip the padding: each row is computed as if it were alone.
        positions = (shared + suffix_mask.cumsum(dim=1) - 1).clamp(min=shared)
        attention, positions, input_ids = (t.to(self.device) for t in (attention, positions, input_ids))

        generated: list[list[int]] = [[] for _ in rows]
        finished_at = [0.0] * len(rows)
        finish_reason = [TRUNCATED] * len(rows)  # until the row ends otherwise
        live = list(range(len(rows)))  # batch row -> index in rows
        sampler = _Sampler(self.generation.temperature)
        stop = set(self.stop_ids)
        for _ in range(max_new_tokens):
            logits = self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
                **forward,
            ).logits[:, -1, :]
            tokens = sampler(logits).tolist()
            now = time.perf_counter() - started
            keep = []
            for batch_row, token in enumerate(tokens):
                index = live[batch_row]
                if token in stop:
                    finished_at[index], finish_reason[index] = now, "stop"
                    continue
                generated[index].append(token)
                if tool_call_end is not None and tool_call_end(generated[index]):
                    finished_at[index], finish_reason[index] = now, "tool_call"
                    continue
                keep.append(batch_row)
            if not keep:
                break
            if len(keep) < len(live):
                selected = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(selected)
                attention, positions = attention[selected], positions[selected]
                tokens = [tokens[i] for i in keep]
                live = [live[i] for i in keep]
            input_ids = torch.tensor(tokens, device=self.device).unsqueeze(1)
            attention = torch.cat([attention, attention.new_ones((len(live), 1))], dim=1)
            positions = positions[:, -1:] + 1
        end = time.perf_counter() - started
        for index in live:
            finished_at[index] = end
        return [
            Generation(
                text=self.tokenizer.decode(tokens, skip_special_tokens=False),
                latency_s=round(finished_at[i], 4),
                tokens_in=len(rows[i]),
                tokens_out=len(tokens) + (finish_reason[i] == "stop"),  # the stop token was generated too
                finish_reason=finish_reason[i],
            )
            for i, tokens in enumerate(generated)
        ]

    def _prefix(self, ids: list[int]) -> list[tuple[Any, Any]]:
        """Keys and values (batch 1) of ``ids``, extending the kept prefix instead of recomputing it."""
        kept = common_prefix_length([self._prefix_ids, ids])
        if kept == len(ids) == len(self._prefix_ids):
            return self._prefix_kv
        cache = self._new_cache(len(ids))
        for layer, (keys, values) in enumerate(self._prefix_kv):
            if kept:
                cache.update(keys[:, :, :kept], values[:, :, :kept], layer)
        if kept < len(ids):
            self.model(
                input_ids=torch.tensor([ids[kept:]], device=self.device),
                position_ids=torch.arange(kept, len(ids), device=self.device).unsqueeze(0),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            self.prefix_tokens_computed += len(ids) - kept
        self._prefix_ids = list(ids)
        self._prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        return self._prefix_kv

    def _new_cache(self, capacity: int) -> Any:
        """A KV cache for sequences of at most ``capacity`` tokens.

        transformers' ``DynamicCache`` concatenates every new token's keys and values onto the whole
        cache, a copy of all of it per decoding step; with a batch of long shared prefixes that copy costs
        more than the model. Models with only full-attention layers get preallocated buffers instead;
        others (sliding-window, hybrid) keep transformers' own cache for their layout.
        """
        from transformers import Cache, DynamicCache

        config = self.model.config.get_text_config()
        layer_types = getattr(config, "layer_types", None) or ["full_attention"]
        if set(layer_types) != {"full_attention"}:
            return DynamicCache(config=self.model.config)
        return Cache(layers=[_BufferLayer(capacity) for _ in range(config.num_hidden_layers)])


class ToolCallEnd:
    """Says whether a row's generated tokens have just completed a ``<tool_call>`` block.

    Called on a row after each new token, it decodes only when it must: the new token's own text
    must end with ``>`` (whitespace aside), the last character of ``</tool_call>``, which a memo per
    token id answers after the first time; then the last few tokens (the tag is at most as many
    tokens as characters) must decode to text ending with the tag; then the whole row must hold an
    opening ``<tool_call>``. The row's text is then exactly what the model would have answered had
    it emitted its end-of-turn token next, so stopping there changes no parsed answer.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._may_close: dict[int, bool] = {}

    def __call__(self, ids: Sequence[int]) -> bool:
        if not ids or not self.may_close(ids[-1]):
            return False
        tail = self.tokenizer.decode(ids[-len(TOOL_CALL_CLOSE) :], skip_special_tokens=False)
        if not tail.rstrip().endswith(TOOL_CALL_CLOSE):
            return False
        return TOOL_CALL_OPEN in self.tokenizer.decode(ids, skip_special_tokens=False)

    def may_close(self, token: int) -> bool:
        """Whether ``token``'s text ends with ``>`` (trailing whitespace aside): it may end the tag."""
        known = self._may_close.get(token)
        if known is None:
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            known = self._may_close[token] = text.rstrip().endswith(TOOL_CALL_CLOSE[-1])
        return known


class _BufferLayer(DynamicLayer):
    """A full-attention cache layer writing into a preallocated buffer: no copy of the past per step."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
        batch, heads, _, dim = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self._keys = torch.empty((batch, heads, self.capacity, dim), dtype=self.dtype, device=self.device)
        self._values = torch.empty(
            (batch, value_states.shape[1], self.capacity, value_states.shape[-1]),
            dtype=self.dtype,
            device=self.device,
        )
        self.is_initialized = True

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"KV cache capacity {self.capacity} exceeded ({end} tokens)")
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: Any) -> None:
        if self.is_initialized:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]


class _Sampler:
    """Greedy at temperature 0; otherwise seeded sampling from the softened distribution."""

    def __init__(self, temperature: float, seed: int = 0) -> None:
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed) if temperature > 0 else None

    def __call__(self, logits: Any) -> Any:
        if self.generator is None:
            return logits.argmax(dim=-1)
        probabilities = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
        return torch.multinomial(probabilities, 1, generator=self.generator).squeeze(1)


def batch_order(prompts: Sequence[list[int]], batch_size: int, windows: int = 4) -> list[int]:
    """The order to answer prompts in: neighbours share long prefixes and have similar lengths.

    Sorting by token ids puts prompts with the longest common prefixes next to each other; within each
    window of ``windows`` batches (which still share their window's prefix) the prompts are then sorted
    by length, so that a batch pads little where prompts differ after a short shared part (a workload
    whose tools change from request to request).
    """
    by_prefix = sorted(range(len(prompts)), key=lambda i: prompts[i])
    window = batch_size * windows
    order: list[int] = []
    for start in range(0, len(by_prefix), window):
        order += sorted(by_prefix[start : start + window], key=lambda i: len(prompts[i]))
    return order


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix that every row starts with."""
    if not rows:
        return 0
    length = min(len(r) for r in rows)
    first = rows[0]
    for other in rows[1:]:
        n = 0
        while n < length and other[n] == first[n]:
            n += 1
        length = n
    return length


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Tokens that end an answer: the tokenizer's end-of-sequence and the model's generation stops."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        for token in value if isinstance(value, list) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    if not ids:
        name = tokenizer.name_or_path
        raise ValueError(f"{name!r} defines no end-of-sequence token: answers would never stop")
    return ids
