"""The CPU decode attention: SDPA's values for one-token queries of grouped heads, with
and without a padding mask; everything else is transformers' SDPA untouched."""

import pytest
import torch
from torch.nn.functional import scaled_dot_product_attention as sdpa
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from grao_pipeline.alignment.attention import cpu_attention

BATCH, HEADS, KV_HEADS, DIM, SCALE = 3, 6, 2, 16, 0.3


class Attention(torch.nn.Module):
    num_key_value_groups = HEADS // KV_HEADS
    is_causal = True


def inputs(length_q: int, length_kv: int, padded: bool):
    torch.manual_seed(0)
    q = torch.randn(BATCH, HEADS, length_q, DIM)
    k, v = (torch.randn(BATCH, KV_HEADS, length_kv, DIM) for _ in range(2))
    mask = torch.ones(length_kv, length_kv, dtype=torch.bool).tril()[-length_q:]
    mask = mask[None, None].expand(BATCH, 1, length_q, length_kv).clone()
    mask[1, ..., :3] = False  # row 1 is left-padded by 3
    return q, k, v, mask if padded else None


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_one_token_queries_match_float64_attention(padded):
    q, k, v, mask = inputs(1, 9, padded)
    out, _ = cpu_attention(Attention(), q, k, v, mask, scaling=SCALE)
    groups = HEADS // KV_HEADS
    expected = sdpa(q.double(), k.double().repeat_interleave(groups, 1),
                    v.double().repeat_interleave(groups, 1), attn_mask=mask, scale=SCALE)
    assert out.shape == (BATCH, 1, HEADS, DIM)
    assert torch.allclose(out.double(), expected.transpose(1, 2), atol=1e-6)
    if padded:  # what sits behind the mask cannot matter
        k[1, :, :3], v[1, :, :3] = 1e4, -1e4
        assert torch.equal(cpu_attention(Attention(), q, k, v, mask, scaling=SCALE)[0], out)


def test_longer_queries_are_sdpa_untouched():
    q, k, v, mask = (t.requires_grad_() if t.is_floating_point() else t for t in inputs(7, 7, True))
    ours, _ = cpu_attention(Attention(), q, k, v, mask, scaling=SCALE)
    theirs, _ = sdpa_attention_forward(Attention(), q, k, v, mask, scaling=SCALE)
    assert torch.equal(ours, theirs)


def test_a_model_attends_with_it_inside_the_block_only(tokenizer):
    from grao_pipeline.alignment.attention import CPU_ATTENTION, cpu_attention_in
    from grao_pipeline.alignment.models import tiny_model

    model = tiny_model(tokenizer).model
    own = model.config._attn_implementation
    ids = torch.randint(0, len(tokenizer), (2, 9))
    with torch.no_grad(), cpu_attention_in(model, torch.device("cpu")):
        assert model.config._attn_implementation == CPU_ATTENTION
        model(input_ids=ids)
    assert model.config._attn_implementation == own
    with pytest.raises(KeyError), cpu_attention_in(model, torch.device("cpu")):
        raise KeyError("a failing step")
    assert model.config._attn_implementation == own
    with cpu_attention_in(model, torch.device("cuda")):  # GPUs keep their own kernels
        assert model.config._attn_implementation == own
