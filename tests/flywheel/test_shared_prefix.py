"""Shared-prefix attention: the prefix's keys and values at batch size 1, the same outputs as without."""

from __future__ import annotations

import random

import pytest
import torch

from flywheel.shared_prefix import ATTENTION, SharedPrefix, use_shared_prefix_attention


@pytest.fixture(scope="module")
def gqa_model():
    """A tiny Llama with grouped-query attention (4 query heads share 2 key/value heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=500,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _alone(model, ids: list[int]) -> torch.Tensor:
    """Logits of one sequence on its own, with transformers' SDPA attention."""
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def _prefix(model, ids: list[int]) -> SharedPrefix:
    with torch.no_grad():
        cache = model(input_ids=torch.tensor([ids]), use_cache=True).past_key_values
    return SharedPrefix([(layer.keys, layer.values) for layer in cache.layers])


def test_right_padded_suffixes_over_a_shared_prefix_equal_each_sequence_alone(gqa_model):
    rng = random.Random(0)
    prefix = [rng.randrange(500) for _ in range(40)]
    suffixes = [[rng.randrange(500) for _ in range(n)] for n in (3, 11, 7)]
    expected = [_alone(gqa_model, prefix + suffix)[len(prefix) :] for suffix in suffixes]

    assert use_shared_prefix_attention(gqa_model)
    width = max(map(len, suffixes))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in suffixes])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in suffixes])
    positions = torch.arange(len(prefix), len(prefix) + width).expand(len(suffixes), -1)
    with torch.no_grad():
        logits = gqa_model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            shared_prefix=_prefix(gqa_model, prefix),
        ).logits
    for row, suffix in enumerate(suffixes):
        assert torch.allclose(logits[row, : len(suffix)], expected[row], atol=1e-5), row


def test_decoding_with_a_cache_of_the_rows_own_tokens_equals_each_sequence_alone(gqa_model):
    # The evaluation layout: suffixes left-padded, then one token per row per step from the cache.
    from transformers import DynamicCache

    rng = random.Random(1)
    prefix = [rng.randrange(500) for _ in range(30)]
    suffixes = [[rng.randrange(500) for _ in range(n)] for n in (2, 9)]
    following = [rng.randrange(500) for _ in range(2)]
    expected = [_alone(gqa_model, prefix + s + [t])[-1] for s, t in zip(suffixes, following, strict=True)]

    assert use_shared_prefix_attention(gqa_model)
    shared = _prefix(gqa_model, prefix)
    width = max(map(len, suffixes))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in suffixes])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes])
    positions = (len(prefix) + mask.cumsum(dim=1) - 1).clamp(min=len(prefix))
    cache = DynamicCache()
    with torch.no_grad():
        gqa_model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            shared_prefix=shared,
        )
        logits = gqa_model(
            input_ids=torch.tensor(following).unsqueeze(1),
            attention_mask=torch.cat([mask, torch.ones((2, 1), dtype=torch.long)], dim=1),
            position_ids=positions[:, -1:] + 1,
            past_key_values=cache,
            use_cache=True,
            shared_prefix=shared,
        ).logits[:, -1]
    assert cache.get_seq_length() == width + 1  # the prefix is not in the rows' cache
    for row in range(2):
        assert torch.allclose(logits[row], expected[row], atol=1e-5), row


def test_without_a_shared_prefix_it_is_sdpa_attention(gqa_model):
    ids = [3, 14, 15, 92, 65, 35]
    expected = _alone(gqa_model, ids)
    assert use_shared_prefix_attention(gqa_model)
    assert gqa_model.config._attn_implementation == ATTENTION
    with torch.no_grad():
        assert torch.allclose(gqa_model(input_ids=torch.tensor([ids])).logits[0], expected, atol=1e-6)


def test_models_with_sliding_window_layers_keep_their_attention():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=16,
    )
    model = MistralForCausalLM(config)
    assert not use_shared_prefix_attention(model)
    assert model.config._attn_implementation != ATTENTION
