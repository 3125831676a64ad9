"""The fused CPU decode kernel (generation/kernels): its packed layout, its GEMM against
float64, its decode step against the float32 policy (at least as close as the eager
bf16 step is), and how the sampler chooses it. Skipped where the CPU lacks AVX512-BF16."""

import logging

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from grao_pipeline.alignment.attention import CPU_ATTENTION
from grao_pipeline.alignment.generation import decoding, kernels, packing
from grao_pipeline.alignment.generation.packing import sampling_copy
from grao_pipeline.alignment.logprobs import completion_logits, prompt_cache
from grao_pipeline.alignment.methods.grpo import GRPOConfig
from grao_pipeline.alignment.tokens import encode_prompts
from tests.fixtures import tiny_model, tiny_moe_model

needs_kernel = pytest.mark.skipif(kernels.unsupported() is not None,
                                  reason=f"fused kernel: {kernels.unsupported()}")


@needs_kernel
def test_pack_vnni_layout():
    """packed[t, p, c, j] = W[48·t + c, 2·p + j] for W the sources' rows stacked, cast as
    torch casts to bf16; columns past N are zero."""
    first, second = torch.randn(60, 6), torch.randn(40, 6).to(torch.bfloat16)
    weight = torch.cat([first.to(torch.bfloat16), second])
    packed = kernels.pack_vnni([first, second])
    assert packed.shape == (3, 3, 48, 2) and packed.dtype == torch.bfloat16
    for t, p, c, j in [(0, 0, 0, 0), (0, 2, 47, 1), (1, 1, 5, 0), (1, 0, 11, 1), (2, 0, 3, 1), (2, 2, 3, 0)]:
        assert packed[t, p, c, j].view(torch.int16) == weight[48 * t + c, 2 * p + j].view(torch.int16)
    unpacked = packed.permute(0, 2, 1, 3).reshape(144, 6)
    assert torch.equal(unpacked[:100].view(torch.int16), weight.view(torch.int16))
    assert not unpacked[100:].any()  # rows 100..143 do not exist
    with pytest.raises(ValueError, match="even"):
        kernels.pack_vnni([torch.zeros(4, 5)])


@needs_kernel
@pytest.mark.parametrize("rows, k, n", [(1, 64, 48), (8, 576, 960), (13, 32, 100), (72, 128, 49)])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
def test_vnni_linear_matches_float64(rows, k, n, with_bias):
    torch.manual_seed(0)
    x, weight = torch.randn(rows, k).to(torch.bfloat16), torch.randn(n, k).to(torch.bfloat16)
    bias = torch.randn(n) if with_bias else None
    got = kernels.vnni_linear(x.view(1, rows, k), kernels.pack_vnni([weight]), bias, n)
    want = x.double() @ weight.double().T + (0 if bias is None else bias.double())
    assert got.shape == (1, rows, n) and got.dtype == torch.float32
    # float32 accumulation of exact bf16 products: a few ulp of the sum of magnitudes.
    bound = 1e-6 * (x.double().abs() @ weight.double().abs().T) + 1e-6
    assert ((got[0].double() - want).abs() <= bound).all()


class Forced(LogitsProcessor):
    """Records each step's scores and forces the given next tokens (teacher forcing)."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens, self.seen = tokens, []

    def __call__(self, input_ids, scores):
        step = len(self.seen)
        self.seen.append(scores.clone())
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(1, self.tokens[:, step:step + 1], 0.0)


PROMPTS = {"unpadded": ["how are you?", "what is it?"],
           "padded": ["hi", "what is your dog called, and why that name?"]}


@needs_kernel
@pytest.mark.parametrize("prompts", PROMPTS.values(), ids=PROMPTS.keys())
def test_fused_step_tracks_the_float32_policy_as_closely_as_the_eager_bf16_step(tokenizer, prompts):
    """Both loops decode the same forced tokens on bf16 sampling copies of one policy;
    the fused kernel's logits are at least as close to the float32 policy's full forward
    as the eager bf16 loop's (it keeps the residual stream in float32)."""
    policy = tiny_model(tokenizer, seed=2, hidden_size=128).model
    policy.config._attn_implementation = CPU_ATTENTION
    encoded = encode_prompts(tokenizer, prompts)
    g, steps = 4, 10
    ids, mask = encoded.ids.repeat_interleave(g, 0), encoded.mask.repeat_interleave(g, 0)
    torch.manual_seed(0)
    tokens = torch.randint(0, len(tokenizer) - 1, (len(ids), steps))
    eos = [len(tokenizer) - 1]  # never forced: no row stops
    with torch.no_grad():
        want = completion_logits(policy, ids, mask, tokens, torch.ones_like(tokens)).float()
    errors = {}
    for kernel in ("fused", "off"):
        sampler = sampling_copy(policy, "bfloat16", rows=len(ids), decode_kernel=kernel)
        assert decoding.fused(sampler) == (kernel == "fused")
        forced = Forced(tokens)
        with torch.inference_mode():
            out = decoding.decode(sampler, ids, mask, prompt_cache(sampler, encoded.ids, encoded.mask, g),
                                  steps, LogitsProcessorList([forced]), eos, tokenizer.pad_token_id,
                                  fused_step=decoding.fused(sampler))
        assert torch.equal(out, tokens)
        got = torch.stack(forced.seen, dim=1)
        assert got.shape == want.shape
        errors[kernel] = float((got - want).abs().max() / want.abs().max())
    assert errors["fused"] < 0.02, errors
    assert errors["fused"] <= 1.1 * errors["off"], errors


@needs_kernel
def test_auto_uses_the_kernel_where_it_runs_and_fused_fails_loudly_elsewhere(tokenizer, caplog,
                                                                             monkeypatch):
    llama = tiny_model(tokenizer).model
    assert decoding.fused(sampling_copy(llama, "bfloat16", rows=4))  # auto
    moe = tiny_moe_model(tokenizer, kind="mixtral").model
    with pytest.raises(RuntimeError, match="decode_kernel = 'fused'.*model type 'mixtral'"):
        sampling_copy(moe, "bfloat16", rows=4, decode_kernel="fused")
    monkeypatch.setattr(packing, "_announced", set())
    with caplog.at_level(logging.INFO, logger=packing.__name__):
        assert not decoding.fused(sampling_copy(moe, "bfloat16", rows=4))
    assert any("not used for MixtralForCausalLM (model type 'mixtral'" in r.getMessage()
               for r in caplog.records)


def test_unsupported_names_the_missing_cpu_feature_and_compiles_nothing(monkeypatch):
    import torch.utils.cpp_extension

    def no_build(*args, **kwargs):
        raise AssertionError("asking whether the kernel can run must not build it")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_build)
    kernels.unsupported()  # on this machine, whatever the answer
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert kernels.unsupported() == "the CPU lacks avx512_bf16, avx512bw, avx512vl"
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset())
    with pytest.raises(kernels.KernelBuildError, match="cannot run here: the CPU lacks"):
        kernels.load.__wrapped__()


def test_copies_of_the_source_share_one_build_and_an_edit_gets_its_own(monkeypatch, tmp_path):
    """Copied Kedro projects import the package from their own paths; torch's builder
    would rebuild for each path (~12 s a process), so the build is keyed by content."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "builds"))
    name, source = kernels._build_source()
    copy = tmp_path / "project/decode_cpu.cpp"
    copy.parent.mkdir()
    copy.write_bytes(kernels.SOURCE.read_bytes())
    monkeypatch.setattr(kernels, "SOURCE", copy)
    assert kernels._build_source() == (name, source)
    assert source.read_bytes() == copy.read_bytes()
    copy.write_bytes(copy.read_bytes() + b"\n// edited\n")
    edited_name, edited_source = kernels._build_source()
    assert edited_name != name and edited_source.read_bytes() == copy.read_bytes()


def test_config_names_a_bad_decode_kernel():
    with pytest.raises(ValueError, match="decode_kernel"):
        GRPOConfig(decode_kernel="fast")
