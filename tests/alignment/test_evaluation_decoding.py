"""Evaluation's greedy answers take training's decode path (``build_sampler``), in
batches of similar prompt length, and still give each prompt ``generate``'s greedy
answer, in the test set's order; the KL from the start policy stays exact."""

import datasets
import pytest
import torch
from transformers import GenerationConfig

from grao_pipeline.alignment.config import EvalConfig
from grao_pipeline.alignment.evaluation import answer_prompts
from grao_pipeline.alignment.generation import decoding, kernels
from grao_pipeline.alignment.generation import sampler as sampler_module
from grao_pipeline.alignment.generation.sampling import sample_completions
from grao_pipeline.alignment.tokens import encode_prompts
from tests.fixtures import tiny_model

# Lengths out of order, so the length-sorted batches differ from the given order.
PROMPTS = ["what is your dog called, and why did you pick that name for him?", "hi",
           "do you like tea?", "where do you live these days, in the city or out of it?",
           "ok", "any plans for the weekend?"]


def talkative(tokenizer, seed: int = 1):
    """A tiny policy whose LM head is its own random matrix: with the tied head, greedy
    decoding repeats the prompt's last token (a newline, stripped to ''), and every
    answer would compare equal whatever the order."""
    policy = tiny_model(tokenizer, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    head = policy.model.lm_head
    head.weight = torch.nn.Parameter(torch.randn(head.weight.shape, generator=generator))
    return policy


def generate_greedy(policy, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Each prompt alone (no padding) through transformers' ``generate``, greedy."""
    model, tok = policy
    texts = []
    for prompt in prompts:
        encoded = encode_prompts(tok, [prompt])
        config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        with torch.no_grad():
            out = model.generate(input_ids=encoded.ids, attention_mask=encoded.mask, generation_config=config)
        texts.append(tok.decode(out[0, encoded.ids.shape[1]:], skip_special_tokens=True).strip())
    return texts


def test_greedy_answers_take_the_training_decode_path_and_equal_generate(tokenizer, monkeypatch):
    policy = talkative(tokenizer)
    test_set = datasets.Dataset.from_list([{"prompt": p, "reference": "yes"} for p in PROMPTS])
    params = EvalConfig(num_prompts=len(PROMPTS), max_new_tokens=6, batch_size=2,
                        sampling_dtype="float32", decode_kernel="off")
    before = policy.model.config._attn_implementation
    loops = []

    def spy(*args, loop, **kwargs):
        loops.append(loop)
        return sample_completions(*args, loop=loop, **kwargs)

    monkeypatch.setattr(sampler_module, "sample_completions", spy)
    answers = answer_prompts(policy, test_set, params)
    # The lean loop, not generate: the policy attended as training's policy does.
    assert loops == [decoding.LEAN] * 3
    assert policy.model.config._attn_implementation == before  # handed back as it came
    assert list(answers["prompt"]) == PROMPTS
    want = generate_greedy(policy, PROMPTS, 6)
    assert len(set(want)) == len(PROMPTS) and all(want)  # answers that tell prompts apart
    assert list(answers["completion"]) == want


def test_the_kl_from_the_start_policy_is_exact_after_trimming_padding(tokenizer):
    """Each answer's KL equals the one computed for its prompt alone, with no padding
    and no batch: dropping a batch's all-padding columns changes nothing."""
    policy, start = talkative(tokenizer, seed=1), talkative(tokenizer, seed=2)
    test_set = datasets.Dataset.from_list([{"prompt": p, "reference": "yes"} for p in PROMPTS])
    params = EvalConfig(num_prompts=len(PROMPTS), max_new_tokens=5, batch_size=3,
                        sampling_dtype="float32")
    batched = answer_prompts(policy, test_set, params, start)
    alone = [answer_prompts(policy, test_set.select([i]), EvalConfig(
        num_prompts=2, max_new_tokens=5, batch_size=1, sampling_dtype="float32"), start)
        for i in range(len(PROMPTS))]
    assert (batched["kl_from_start"] > 0).all()
    assert batched["kl_from_start"].tolist() == pytest.approx(
        [frame["kl_from_start"].item() for frame in alone], rel=1e-4)
    assert answer_prompts(start, test_set, params, start)["kl_from_start"].abs().max() < 1e-6


@pytest.mark.skipif(kernels.unsupported() is not None, reason=f"fused kernel: {kernels.unsupported()}")
def test_greedy_answers_through_the_fused_kernel_mostly_agree_with_generate(tokenizer):
    """The fused kernel's bf16 copy is not bit-identical to the float32 policy: at most
    a third of the prompts may get another greedy answer (its logits' closeness is
    bounded in test_kernels). Not measured on the AVX2 machine this was written on."""
    policy = talkative(tokenizer)
    test_set = datasets.Dataset.from_list([{"prompt": p, "reference": "yes"} for p in PROMPTS])
    answers = answer_prompts(policy, test_set, EvalConfig(
        num_prompts=len(PROMPTS), max_new_tokens=6, batch_size=3, decode_kernel="fused"))
    want = generate_greedy(policy, PROMPTS, 6)
    differ = sum(got != ref for got, ref in zip(answers["completion"], want, strict=True))
    assert differ <= len(PROMPTS) // 3, (list(answers["completion"]), want)
