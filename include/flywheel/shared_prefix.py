"""Attention over a prefix that every row of a batch shares, read once instead of once per row.

A workload's requests all open with the same system message and tool schemas (about 1,300 tokens of a
router prompt), and only the last few dozen tokens differ. Training and evaluation compute that
prefix's keys and values once per batch. Handed to transformers' attention as a cache expanded to the
batch, though, every row still gets its own copy: grouped-query attention repeats the keys and values
to every query head, and the attention reads all of it, per row and per layer, at every decoding step.
On a CPU that copying and reading is most of an evaluation's time (a decoding step of 16 router rows:
3.1 s of attention and 1.8 s of copies against 3.5 s of matrix products, profiled over 24 steps).

:func:`shared_prefix_attention` is registered with transformers as the attention implementation
:data:`ATTENTION`. Called with a :class:`SharedPrefix` (the model's forward passes the keyword through
to every attention layer), it attends each query to the prefix's keys and values, kept once at batch
size 1, and to the row's own keys and values (the suffix, in the cache or the current input), with one
softmax over both: the same result as attending to the concatenation. That is for one query per row (a
decoding step). A pass of several tokens per row (a prefill, a training pass) goes to SDPA's fused
kernel over the prefix expanded to the rows as a view: materialised weights of many queries over the
prefix cost more than the per-row reads they save (a prefill of 16 few-shot router rows padded to 792
own tokens: 123 s that way, 55 s through SDPA). Without a prefix it is transformers' SDPA attention,
so the prefix itself, and any model call that shares nothing, run as before. Models whose layers are
all full attention use it (:func:`use_shared_prefix_attention`); others keep theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "flywheel_shared_prefix"
"""The attention implementation's name in transformers' registry."""


@dataclass(frozen=True)
class SharedPrefix:
    """Keys and values of the prefix every row starts with, per layer, each ``(1, kv_heads, length, dim)``."""

    layers: list[tuple[Any, Any]]

    @property
    def length(self) -> int:
        return int(self.layers[0][0].shape[-2]) if self.layers else 0


def shared_prefix_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    shared_prefix: SharedPrefix | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention of ``query`` (batch, heads, q, dim) to the shared prefix and to ``key``/``value``.

    ``key``/``value`` (batch, kv_heads, s, dim) are the rows' own: the suffix so far. ``attention_mask``
    is transformers' SDPA mask over them (causal and padding; None where it is purely causal). Returns
    transformers' layout, (batch, q, heads, dim).
    """
    if shared_prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if query.shape[2] > 1:
        return _expanded_sdpa(
            module, query, key, value, attention_mask, shared_prefix, dropout, scaling, **kwargs
        )
    prefix_key, prefix_value = shared_prefix.layers[module.layer_idx]
    batch, heads, queries, dim = query.shape
    kv_heads, own = key.shape[1], key.shape[-2]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    # Queries grouped by the key/value head they share: (kv_heads, batch * groups * queries, dim).
    grouped = query.view(batch, kv_heads, groups, queries, dim)
    stacked = grouped.permute(1, 0, 2, 3, 4).reshape(kv_heads, -1, dim)
    to_prefix = torch.matmul(stacked, prefix_key[0].transpose(-1, -2)) * scale
    to_prefix = to_prefix.view(kv_heads, batch, groups, queries, -1).permute(1, 0, 2, 3, 4)
    # The groups fold into the rows of one product per key/value head: no copy of the keys per group.
    folded = query.reshape(batch, kv_heads, groups * queries, dim)
    to_own = torch.matmul(folded, key.transpose(-1, -2)).view(batch, kv_heads, groups, queries, own) * scale
    mask = _own_mask(attention_mask, queries, own, query.device)
    if mask is not None:
        to_own = to_own.masked_fill(~mask.view(mask.shape[0], 1, 1, queries, own), float("-inf"))
    weights = torch.softmax(torch.cat([to_prefix, to_own], dim=-1).float(), dim=-1).to(query.dtype)
    if dropout and module.training:
        weights = torch.nn.functional.dropout(weights, p=dropout)
    length = prefix_key.shape[-2]
    on_prefix = weights[..., :length].permute(1, 0, 2, 3, 4).reshape(kv_heads, -1, length)
    from_prefix = torch.matmul(on_prefix, prefix_value[0]).view(kv_heads, batch, groups, queries, dim)
    on_own = weights[..., length:].reshape(batch, kv_heads, groups * queries, own)
    from_own = torch.matmul(on_own, value).view(batch, kv_heads, groups, queries, dim)
    output = from_prefix.permute(1, 0, 2, 3, 4) + from_own
    return output.reshape(batch, heads, queries, dim).transpose(1, 2).contiguous(), None


def _expanded_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    shared_prefix: SharedPrefix,
    dropout: float,
    scaling: float | None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention of several queries per row (a prefill, a training pass) through SDPA's fused kernel,
    over the prefix's keys and values expanded to every row, joined with the rows' own.

    For many queries the fused kernel wins: it keeps no attention weights (12 training steps of 8
    router rows: peak 5.9 instead of 9.2 GB, 0.59 instead of 0.55 examples/s), and the prefix's one
    copy per row and pass is small next to the queries' work."""
    prefix_key, prefix_value = shared_prefix.layers[module.layer_idx]
    batch, _, queries, _ = query.shape
    own = key.shape[-2]
    keys = torch.cat([prefix_key.expand(batch, -1, -1, -1), key], dim=2)
    values = torch.cat([prefix_value.expand(batch, -1, -1, -1), value], dim=2)
    # Several queries: _own_mask is never None here (at least the causal mask).
    own_mask = _own_mask(attention_mask, queries, own, query.device)
    visible = torch.ones((batch, queries, shared_prefix.length), dtype=torch.bool, device=query.device)
    mask = torch.cat([visible, own_mask.expand(batch, -1, -1)], dim=-1).unsqueeze(1)
    return sdpa_attention_forward(module, query, keys, values, mask, dropout, scaling, **kwargs)


def _own_mask(attention_mask: Any, queries: int, own: int, device: Any) -> Any:
    """The boolean mask (batch or 1, queries, own) of the rows' own keys; None when every key is visible."""
    if attention_mask is not None:
        mask = attention_mask[:, 0, :, -own:] if attention_mask.dim() == 4 else attention_mask
        return mask if mask.dtype == torch.bool else mask == 0
    if queries == 1:
        return None
    # transformers leaves out a purely causal mask: query i (of the last `queries` keys) sees keys <= i.
    positions = torch.arange(own, device=device)
    return (positions[None, :] <= positions[-queries:, None]).unsqueeze(0)


def use_shared_prefix_attention(model: Any) -> bool:
    """Switch ``model`` to :data:`ATTENTION` when all its layers are full attention; True if it was."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if set(layer_types) != {"full_attention"} or getattr(config, "sliding_window", None):
        return False
    try:
        model.set_attn_implementation(ATTENTION)
    except (ValueError, AttributeError):
        return False
    return True


AttentionInterface.register(ATTENTION, shared_prefix_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
