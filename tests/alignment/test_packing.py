"""The sampling copy: oneDNN-packed bf16 linears (q/k/v and gate/up as one GEMM each) give
the plain bf16 copy's logits bit for bit, before and after a re-sync, for dense (tied
embedding), biased and MoE models; linears packed for the fused decode kernel give them
to float32-accumulation order (tests/alignment/test_kernels.py tests the kernel itself)."""

import copy

import pytest
import torch

from grao_pipeline.alignment.attention import CPU_ATTENTION
from grao_pipeline.alignment.generation import kernels, packing
from grao_pipeline.alignment.generation.packing import (
    PackedLinear,
    SharedInputSlice,
    packing_available,
    sampling_copy,
    sync_copy,
)
from tests.fixtures import tiny_model, tiny_moe_model

pytestmark = pytest.mark.skipif(not packing_available(), reason="oneDNN bf16 not available")


def plain_bf16(model):
    """A bf16 copy with plain linears, attending as the sampling copy does."""
    plain = copy.deepcopy(model).to(torch.bfloat16).eval()
    plain.config._attn_implementation = CPU_ATTENTION
    return plain


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def same_logits(layout: str, got: torch.Tensor, want: torch.Tensor) -> bool:
    """Bit for bit for oneDNN's layout; for the fused kernel's, within one bf16 rounding
    of the logits (its GEMMs accumulate in another order, then round to bf16)."""
    if layout == "off":
        return torch.equal(got, want)
    return torch.allclose(got.float(), want.float(), rtol=2 ** -7, atol=2e-2)


LAYOUTS = [pytest.param("off", id="onednn"), pytest.param("fused", id="vnni", marks=pytest.mark.skipif(
    kernels.unsupported() is not None, reason=f"fused kernel: {kernels.unsupported()}"))]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("build", [
    lambda tok: tiny_model(tok),
    lambda tok: tiny_moe_model(tok, kind="qwen2_moe"),  # q/k/v carry biases
], ids=["llama_tied", "qwen2_moe_bias"])
def test_packed_copy_matches_plain_bf16_before_and_after_sync(monkeypatch, tokenizer, build, layout):
    policy = build(tokenizer).model
    if layout == "fused":  # the kernel's layout even for the MoE model, which it cannot decode
        monkeypatch.setattr(packing, "_layout", lambda copy_model, kernel: kernels.VNNI_LAYOUT)
    copy_model = sampling_copy(policy, "bfloat16", rows=8, decode_kernel=layout)
    packed = [m for m in copy_model.modules() if isinstance(m, PackedLinear)]
    assert packed and not any(type(m) is torch.nn.Linear for m in copy_model.modules())
    assert {m.layout for m in packed} == {"onednn" if layout == "off" else kernels.VNNI_LAYOUT}
    ids = torch.randint(0, len(tokenizer), (3, 11))
    assert same_logits(layout, logits(copy_model, ids), logits(plain_bf16(policy), ids))

    with torch.no_grad():  # an optimiser step, every tensor including the tied embedding
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    stale = logits(copy_model, ids)
    sync_copy(copy_model, policy)
    fresh = logits(copy_model, ids)
    assert not torch.equal(stale, fresh)
    assert same_logits(layout, fresh, logits(plain_bf16(policy), ids))


def test_fp32_sampling_is_the_policy_itself(tokenizer):
    policy = tiny_model(tokenizer).model
    assert sampling_copy(policy, "float32", rows=8) is policy


def test_sync_names_a_tensor_the_policy_lacks(tokenizer):
    policy = tiny_model(tokenizer).model
    copy_model = sampling_copy(policy, "bfloat16", rows=8)
    copy_model.register_buffer("stray", torch.zeros(1))
    with pytest.raises(KeyError, match="stray"):
        sync_copy(copy_model, policy)


def test_a_lora_policy_samples_from_its_merged_weights(tokenizer):
    from grao_pipeline.alignment.config import LoRAConfig
    from grao_pipeline.alignment.lora import with_adapters

    policy = with_adapters(tiny_model(tokenizer).model,
                           LoRAConfig(enabled=True, rank=4, alpha=8,
                                      target_modules=["q_proj", "v_proj", "down_proj"]), 0, "t")
    copy_model = sampling_copy(policy, "bfloat16", rows=8, decode_kernel="off")
    assert not any("lora" in name for name, _ in copy_model.named_parameters())
    with torch.no_grad():  # training moves the adapters (B starts at 0) and nothing else
        for name, p in policy.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    sync_copy(copy_model, policy)
    merged = plain_bf16(copy.deepcopy(policy).merge_and_unload())
    ids = torch.randint(0, len(tokenizer), (3, 11))
    assert not torch.equal(logits(copy_model, ids), logits(plain_bf16(tiny_model(tokenizer).model), ids))
    assert torch.equal(logits(copy_model, ids), logits(merged, ids))


def test_cached_decoding_in_the_sampler_matches_a_full_forward(tokenizer):
    from grao_pipeline.alignment.attention import CPU_ATTENTION

    policy = tiny_model(tokenizer).model
    copy_model = sampling_copy(policy, "bfloat16", rows=3)
    assert copy_model.config._attn_implementation == CPU_ATTENTION
    assert policy.config._attn_implementation != CPU_ATTENTION
    ids = torch.randint(0, len(tokenizer), (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, as prompts have
    with torch.no_grad():
        prefill = copy_model(input_ids=ids[:, :-2], attention_mask=mask[:, :-2], use_cache=True)
        cache = prefill.past_key_values
        step = copy_model(input_ids=ids[:, -2:-1], attention_mask=mask[:, :-1], past_key_values=cache,
                       use_cache=True)
        step = copy_model(input_ids=ids[:, -1:], attention_mask=mask, past_key_values=step.past_key_values,
                       use_cache=True)
        full = plain_bf16(policy)(input_ids=ids, attention_mask=mask).logits[:, -1]
    assert torch.allclose(step.logits[:, -1].float(), full.float(), atol=0.05), \
        (step.logits[:, -1] - full).abs().max()


def test_released_weights_refuse_to_sample_until_the_next_sync(tokenizer):
    from grao_pipeline.alignment.generation.packing import release_copy

    policy = tiny_model(tokenizer).model
    copy_model = sampling_copy(policy, "bfloat16", rows=8)
    ids = torch.randint(0, len(tokenizer), (3, 11))
    before = logits(copy_model, ids)
    release_copy(copy_model)
    assert all(m.packed is None for m in copy_model.modules() if isinstance(m, PackedLinear))
    with pytest.raises(RuntimeError, match="released after its rollout"):
        logits(copy_model, ids)
    sync_copy(copy_model, policy)
    assert torch.equal(logits(copy_model, ids), before)


def test_grouped_linears_serve_their_columns_and_recompute_for_another_input(tokenizer):
    """q/k/v (and gate/up) run as one packed GEMM, computed once per input tensor; a new
    tensor or the same tensor modified in place is computed afresh, so a model that
    feeds the members different inputs stays exact. Inference tensors (generation) are
    matched by identity."""
    policy = tiny_model(tokenizer).model
    copy_model = sampling_copy(policy, "bfloat16", rows=8, decode_kernel="off")
    layers = policy.config.num_hidden_layers
    assert len([m for m in copy_model.modules() if isinstance(m, PackedLinear)]) == 4 * layers + 1
    attn, plain = copy_model.model.layers[0].self_attn, policy.model.layers[0].self_attn
    assert all(isinstance(getattr(attn, n), SharedInputSlice) for n in ("q_proj", "k_proj", "v_proj"))

    def expected(name, x):
        return torch.nn.functional.linear(x, getattr(plain, name).weight.to(torch.bfloat16))

    calls, group = [], attn.packed_q_proj_k_proj_v_proj
    group.forward = lambda x, compute=group.forward: calls.append(1) or compute(x)
    x = torch.randn(3, 5, policy.config.hidden_size).to(torch.bfloat16)
    for name in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(getattr(attn, name)(x), expected(name, x)), name
    assert len(calls) == 1
    x.mul_(2)
    assert torch.equal(attn.k_proj(x), expected("k_proj", x))
    other = torch.randn_like(x)
    assert torch.equal(attn.v_proj(other), expected("v_proj", other))
    with torch.inference_mode():  # no version counter: one computation per tensor object
        frozen = torch.randn_like(x)
        assert torch.equal(attn.q_proj(frozen), expected("q_proj", frozen))
        assert torch.equal(attn.k_proj(frozen), expected("k_proj", frozen))
        another = torch.randn_like(x)
        assert torch.equal(attn.v_proj(another), expected("v_proj", another))
    assert len(calls) == 5
