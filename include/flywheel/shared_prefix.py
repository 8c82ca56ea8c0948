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
softmax over both: the same result as attending to the concatenation. Without one it is transformers'
SDPA attention, so the prefix itself, and any model call that shares nothing, run as before. Models
whose layers are all full attention use it (:func:`use_shared_prefix_attention`); others keep theirs.
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
    to_own = torch.matmul(grouped, key.unsqueeze(2).transpose(-1, -2)) * scale
    mask = _own_mask(attention_mask, queries, own, query.device)
    if mask is not None:
        to_own = to_own.masked_fill(~mask.view(mask.shape[0], 1, 1, queries, own), float("-inf"))
    weights = torch.softmax(torch.cat([to_prefix, to_own], dim=-1).float(), dim=-1).to(query.dtype)
    if dropout and module.training:
        weights = torch.nn.functional.dropout(weights, p=dropout)
    length = prefix_key.shape[-2]
    on_prefix = weights[..., :length].permute(1, 0, 2, 3, 4).reshape(kv_heads, -1, length)
    from_prefix = torch.matmul(on_prefix, prefix_value[0]).view(kv_heads, batch, groups, queries, dim)
    output = from_prefix.permute(1, 0, 2, 3, 4) + torch.matmul(weights[..., length:], value.unsqueeze(2))
    return output.reshape(batch, heads, queries, dim).transpose(1, 2).contiguous(), None


def attention_pays(prefix: int, own: int) -> bool:
    """Whether rows of ``own`` tokens of their own should attend to a shared ``prefix`` with
    :func:`shared_prefix_attention`, rather than with SDPA over the prefix expanded to every row.

    It saves reading the prefix once per row, but it materialises each row's attention to its own
    tokens (``own`` squared per head and layer; kept for the backward pass in training), which SDPA's
    fused kernel never does. So only where a row's own tokens are at most the prefix: a router request
    after its tool schemas, not a BFCL request of 1,600 tokens after a 50-token system message (whose
    own attention in batches of 5 rows outgrew a 24 GiB machine).
    """
    return 0 < own <= prefix


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
