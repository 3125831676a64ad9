"""The lean decode loop gives ``generate``'s tokens bit for bit: sampled and greedy,
with padded and unpadded prompts, one-token prompts, rows stopping at EOS at different
steps, and EOS held back by ``min_new_tokens``; on the fp32 policy and on the packed
bf16 sampling copy. Models it cannot decode exactly go to ``generate``, and say why."""

import logging

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList

from grao_pipeline.alignment.attention import CPU_ATTENTION
from grao_pipeline.alignment.generation import Sampler, decoding
from grao_pipeline.alignment.generation import sampler as sampler_module
from grao_pipeline.alignment.generation.packing import packing_available, sampling_copy
from grao_pipeline.alignment.generation.sampling import InverseCDFSampling, sample_completions
from grao_pipeline.alignment.logprobs import prompt_cache
from grao_pipeline.alignment.tokens import encode_prompts
from tests.fixtures import tiny_model, tiny_moe_model


def both_loops(monkeypatch, model, tok, encoded, seed, **kwargs):
    """(generate's samples, the lean loop's samples), from the same seed."""
    assert decoding.choose_loop(model)[0] == decoding.LEAN
    torch.manual_seed(seed)
    reference = sample_completions(model, tok, encoded, loop=decoding.GENERATE, **kwargs)
    torch.manual_seed(seed)
    return reference, sample_completions(model, tok, encoded, loop=decoding.LEAN, **kwargs)


def cpu_attending(model):
    model.config._attn_implementation = CPU_ATTENTION
    return model


def eos_prone(tokenizer, greedy: bool = False):
    """A tiny policy whose EOS logit is lifted by an amount that varies with the hidden
    state, so rows stop at different steps: relative to the logsumexp when sampled,
    to the largest logit when greedy."""
    model = cpu_attending(tiny_model(tokenizer, seed=3).model)

    def lift_eos(module, inputs, logits):
        hidden = inputs[0].float()
        z = hidden[..., 0] / hidden.std(dim=-1)
        level = logits.float().amax(dim=-1) + z + 0.5 if greedy else \
            torch.logsumexp(logits.float(), dim=-1) + 2.5 * z - 2.5
        logits[..., tokenizer.eos_token_id] = level.to(logits.dtype)
        return logits

    model.lm_head.register_forward_hook(lift_eos)
    return model


PROMPTS = {"unpadded": ["how are you?", "what is it?"],
           "padded": ["hi", "what is your dog called, and why that name?"],
           "one_token": ["a", "b"]}


@pytest.mark.parametrize("prompts", PROMPTS.values(), ids=PROMPTS.keys())
@pytest.mark.parametrize("do_sample", [True, False], ids=["sampled", "greedy"])
def test_lean_loop_gives_generates_tokens(monkeypatch, tokenizer, prompts, do_sample):
    model = eos_prone(tokenizer, greedy=not do_sample)
    if prompts == PROMPTS["one_token"]:  # no chat template: one token each, no prompt cache
        encoded = tokenizer(prompts, return_tensors="pt")
        encoded = type("Encoded", (), {"ids": encoded.input_ids, "mask": encoded.attention_mask})
        assert encoded.ids.shape[1] == 1
    else:
        encoded = encode_prompts(tokenizer, prompts)
    lengths = set()
    for seed in range(3):
        reference, lean = both_loops(monkeypatch, model, tokenizer, encoded, seed,
                                     num_generations=4, max_new_tokens=12, temperature=0.8,
                                     do_sample=do_sample)
        assert torch.equal(lean.ids, reference.ids) and torch.equal(lean.mask, reference.mask)
        assert lean.texts == reference.texts
        lengths |= set(lean.mask.sum(1).tolist())
    # Rows stopped at different steps (greedy rows of one prompt are alike).
    assert len(lengths) >= (3 if do_sample else 1), lengths


def test_raw_tokens_and_min_new_tokens(monkeypatch, tokenizer):
    """``decode``'s own output is ``generate``'s: pad after a row's EOS, and the loop ends
    once every row has stopped; ``min_new_tokens`` holds EOS back that long."""
    model = eos_prone(tokenizer)
    encoded = encode_prompts(tokenizer, PROMPTS["padded"])
    ids, mask = encoded.ids.repeat_interleave(4, 0), encoded.mask.repeat_interleave(4, 0)
    eos, pad = [tokenizer.eos_token_id], tokenizer.pad_token_id
    for seed in range(3):
        processors = LogitsProcessorList([InverseCDFSampling(1.0)])
        config = GenerationConfig(do_sample=False, max_new_tokens=60, eos_token_id=eos,
                                  pad_token_id=pad)
        with torch.inference_mode():
            torch.manual_seed(seed)
            reference = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                       past_key_values=prompt_cache(model, encoded.ids, encoded.mask, 4),
                                       logits_processor=processors)[:, ids.shape[1]:]
            torch.manual_seed(seed)
            lean = decoding.decode(model, ids, mask, prompt_cache(model, encoded.ids, encoded.mask, 4),
                                   60, processors, eos, pad)
        assert torch.equal(lean, reference) and lean.shape[1] < 60  # all stopped early
    reference, lean = both_loops(monkeypatch, model, tokenizer, encoded, 0, num_generations=4,
                                 max_new_tokens=12, min_new_tokens=9)
    assert torch.equal(lean.ids, reference.ids)
    assert int(lean.mask.sum(1).min()) >= 10  # 9 tokens, then EOS at the earliest


@pytest.mark.skipif(not packing_available(), reason="oneDNN bf16 not available")
def test_packed_sampling_copy(monkeypatch, tokenizer):
    policy = tiny_model(tokenizer, seed=1).model
    sampler = sampling_copy(cpu_attending(policy), "bfloat16", rows=8, decode_kernel="off")
    assert hasattr(sampler.model.layers[0].self_attn, "packed_q_proj_k_proj_v_proj")
    encoded = encode_prompts(tokenizer, PROMPTS["padded"])
    reference, lean = both_loops(monkeypatch, sampler, tokenizer, encoded, 0, num_generations=4,
                                 max_new_tokens=16, min_new_tokens=16)
    assert torch.equal(lean.ids, reference.ids) and lean.ids.shape == (8, 16)


def test_other_models_go_to_generate_and_it_is_logged(monkeypatch, tokenizer, caplog):
    monkeypatch.setattr(sampler_module, "_announced", set())  # logged once per process otherwise
    moe = cpu_attending(tiny_moe_model(tokenizer, kind="mixtral").model)
    assert "model type 'mixtral'" in decoding.unsupported(moe)
    plain = tiny_model(tokenizer).model  # transformers' own attention (evaluation, say)
    assert "not 'grao_cpu'" in decoding.unsupported(plain)
    sampler = Sampler.around(moe)
    assert sampler.loop == decoding.GENERATE
    with caplog.at_level(logging.INFO, logger=sampler_module.__name__):
        sampler.sample(tokenizer, encode_prompts(tokenizer, ["hi"]), 2, 3)
    assert any("generate (model type 'mixtral'" in r.getMessage() for r in caplog.records)
