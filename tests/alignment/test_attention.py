"""The CPU attention: SDPA's values for one-token queries of grouped heads, with and
without a padding mask; the explicit softmax's values and gradients for small
multi-token attention; everything else is transformers' SDPA untouched."""

import pytest
import torch
from torch.nn.functional import scaled_dot_product_attention as sdpa
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from grao_pipeline.alignment import attention
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


def reference(q, k, v, mask):
    """Float64 SDPA over repeated key/value heads, [B, Q, H, D]."""
    groups = HEADS // KV_HEADS
    return sdpa(q.double(), k.double().repeat_interleave(groups, 1), v.double().repeat_interleave(groups, 1),
                attn_mask=mask, scale=SCALE).transpose(1, 2)


@pytest.mark.parametrize(("length_q", "length_kv", "padded"), [(7, 7, True), (7, 7, False), (4, 9, True)],
                         ids=["padded", "causal-no-mask", "after-a-cache"])
def test_small_multi_token_attention_matches_float64_values_and_gradients(length_q, length_kv, padded):
    q, k, v, mask = inputs(length_q, length_kv, padded)
    for t in (q, k, v):
        t.requires_grad_()
    out, _ = cpu_attention(Attention(), q, k, v, mask, scaling=SCALE)
    expected = reference(q, k, v, mask if padded else
                         torch.ones(length_q, length_kv, dtype=torch.bool).tril(length_kv - length_q))
    # A left-padded row's first queries see no key at all: SDPA gives them NaN, and
    # what they hold cannot reach a real position, so they are left out.
    real = torch.ones(BATCH, length_q, dtype=torch.bool)
    if padded:
        real = mask.any(-1).squeeze(1)
    assert out.shape == (BATCH, length_q, HEADS, DIM)
    assert torch.allclose(out[real].double(), expected[real], atol=1e-6)

    weights = torch.randn(out.shape, dtype=torch.float64)
    ours = torch.autograd.grad((out.double() * weights)[real].sum(), (q, k, v))
    theirs = torch.autograd.grad((expected * weights)[real].sum(), (q, k, v))
    for mine, exact in zip(ours, theirs, strict=True):
        assert torch.isfinite(mine).all()
        assert torch.allclose(mine, exact, atol=1e-5)


def test_larger_attention_and_dropout_are_sdpa_untouched(monkeypatch):
    q, k, v, mask = (t.requires_grad_() if t.is_floating_point() else t for t in inputs(7, 7, True))
    theirs, _ = sdpa_attention_forward(Attention(), q, k, v, mask, scaling=SCALE)
    explicit, _ = cpu_attention(Attention(), q, k, v, mask, scaling=SCALE)
    assert not torch.equal(explicit, theirs)  # the explicit form, not SDPA's kernel
    monkeypatch.setattr(attention, "EXPLICIT_MAX_WEIGHTS", BATCH * HEADS * 7 * 7 - 1)
    assert torch.equal(cpu_attention(Attention(), q, k, v, mask, scaling=SCALE)[0], theirs)
    torch.manual_seed(1)
    dropped, _ = cpu_attention(Attention(), q, k, v, mask, dropout=0.5, scaling=SCALE)
    torch.manual_seed(1)
    assert torch.equal(dropped, sdpa_attention_forward(Attention(), q, k, v, mask, dropout=0.5,
                                                       scaling=SCALE)[0])


def test_a_model_attends_with_it_inside_the_block_only(tokenizer):
    from grao_pipeline.alignment.attention import CPU_ATTENTION, cpu_attention_in
    from tests.fixtures import tiny_model

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
