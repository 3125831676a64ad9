import pytest
import torch

from grao_pipeline.alignment.generation.sampling import sample_completions
from grao_pipeline.alignment.logprobs import token_logps
from grao_pipeline.alignment.tokens import (
    check_prompt_lengths,
    completion_mask,
    encode_completions,
    encode_prompts,
    format_prompts,
    prompt_token_lengths,
)

EOS = 9


def test_masks_stop_at_first_eos_inclusive():
    ids = torch.tensor([[5, EOS, 7, EOS], [5, 6, 7, 8], [EOS, 1, 2, 3], [1, 2, 3, EOS]])
    assert completion_mask(ids, [EOS]).tolist() == [
        [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    # several EOS ids (tokenizer EOS + generation-config EOS)
    assert completion_mask(torch.tensor([[4, 3, 9]]), [3, 9]).tolist() == [[1, 1, 0]]


def test_reference_answers_end_in_eos_and_are_cut(tokenizer):
    eos = tokenizer.eos_token_id
    ids, mask = encode_completions(tokenizer, ["hi", "a much longer answer than that one"], 4, eos)
    assert ids.shape == (2, 4)
    n_hi = len(tokenizer("hi", add_special_tokens=False)["input_ids"])
    assert ids[0, n_hi].item() == eos and mask[0].sum().item() == n_hi + 1
    assert mask[1].tolist() == [1, 1, 1, 1] and eos not in ids[1].tolist()


def test_logps_match_an_unpadded_forward(tiny):
    """Left padding + position ids + logits_to_keep must give the same log-probs as
    running each sequence alone."""
    model, tok = tiny
    enc = encode_prompts(tok, ["hi", "a longer prompt with more tokens"])
    comp_ids, comp_mask = encode_completions(tok, ["fine", "ok then"], 6, tok.eos_token_id)
    batched = token_logps(model, enc.ids, enc.mask, comp_ids, comp_mask)
    for i in range(2):
        p = enc.ids[i][enc.mask[i].bool()]
        c = comp_ids[i][comp_mask[i].bool()]
        full = torch.cat([p, c])[None]
        logits = model(input_ids=full).logits[0, len(p) - 1:-1].float()
        alone = torch.log_softmax(logits, -1).gather(1, c[:, None]).squeeze(1)
        assert torch.allclose(batched[i][: len(c)], alone, atol=1e-5)


def test_sampling_shapes_truncation_and_eos(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    enc = encode_prompts(tok, ["hi", "hello there"])
    out = sample_completions(model, tok, enc, num_generations=3, max_new_tokens=5, temperature=1.0)
    assert out.ids.shape[0] == 6 and out.ids.shape[1] <= 5 and len(out.texts) == 6
    has_eos = torch.isin(out.ids, torch.tensor([tok.eos_token_id])).any(1)
    assert out.num_truncated == int((~has_eos).sum())
    assert (out.mask.sum(1)[~has_eos] == out.ids.shape[1]).all()
    assert not torch.is_inference(out.ids)


def test_min_new_tokens_holds_back_eos_exactly_that_long(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    # EOS gets +100 on every step, so it is drawn as soon as it is allowed.
    hook = model.lm_head.register_forward_hook(
        lambda module, inputs, logits: logits.index_add(-1, torch.tensor([tok.eos_token_id]),
                                                        torch.full((*logits.shape[:-1], 1), 100.0)))
    try:
        enc = encode_prompts(tok, ["hi", "hello there"])
        for do_sample in (True, False):
            out = sample_completions(model, tok, enc, num_generations=2, max_new_tokens=6,
                                     do_sample=do_sample, min_new_tokens=3)
            assert (out.ids[:, 3] == tok.eos_token_id).all(), out.ids
            assert (out.mask.sum(1) == 4).all() and out.num_truncated == 0
    finally:
        hook.remove()


def test_prompt_longer_than_limit_is_refused(tokenizer):
    with pytest.raises(ValueError, match="exceeds max_prompt_tokens=5"):
        check_prompt_lengths(tokenizer, ["a rather long prompt " * 3], 5, 4, 512)
    with pytest.raises(ValueError, match="exceed the model context"):
        check_prompt_lengths(tokenizer, ["hi"], 500, 100, 512)


def test_prompt_lengths_are_measured_once_per_tokenizer_content(tmp_path, monkeypatch):
    """A tokenizer loaded again from the same folder reuses the counts (no template is
    rendered); one with another chat template measures afresh, and gets its own counts."""
    from transformers import AutoTokenizer

    from tests.fixtures import gpt2_tokenizer

    gpt2_tokenizer().save_pretrained(tmp_path / "tok")
    prompts = [f"question number {i}, asked with some words?" for i in range(5)]
    first = AutoTokenizer.from_pretrained(tmp_path / "tok")
    want = [len(first(format_prompts(first, [p]), add_special_tokens=False)["input_ids"][0]) for p in prompts]
    assert prompt_token_lengths(first, prompts) == want

    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    rendered = []
    monkeypatch.setattr(type(again), "apply_chat_template",
                        lambda self, *a, **k: rendered.append(a) or "")
    assert prompt_token_lengths(again, prompts[::-1]) == want[::-1] and rendered == []
    monkeypatch.undo()

    other = AutoTokenizer.from_pretrained(tmp_path / "tok")
    other.chat_template = "{% for m in messages %}<|im_start|>user: {{ m['content'] }}{% endfor %}"
    assert prompt_token_lengths(other, prompts) == [
        len(other(format_prompts(other, [p]), add_special_tokens=False)["input_ids"][0]) for p in prompts]
    assert prompt_token_lengths(other, prompts) != want


MEMORY_PROBE = """
import json, sys, torch
from transformers import AutoModelForCausalLM, LlamaConfig
from grao_pipeline.alignment.logprobs import completion_logits, token_logps
torch.set_num_threads(1)
torch.manual_seed(0)
V, N, P, C = 150_000, 16, 8, 64
model = AutoModelForCausalLM.from_config(LlamaConfig(
    vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
prompt, comp = torch.randint(0, V, (N, P)), torch.randint(0, V, (N, C))
args = (model, prompt, torch.ones_like(prompt), comp, torch.ones_like(comp))
def status_kb(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
# Reset the peak-RSS mark, so set-up (model init) cannot hide the measured peak.
open("/proc/self/clear_refs", "w").write("5")
before = status_kb("VmRSS:")
if sys.argv[1] == "full":  # the old way: a full float32 log-softmax, then gather
    logps = torch.log_softmax(completion_logits(*args).float(), -1).gather(2, comp.unsqueeze(-1)).squeeze(-1)
else:
    logps = token_logps(*args)
logps.sum().backward()
peak = status_kb("VmHWM:")
torch.save(logps.detach(), sys.argv[2])
print(json.dumps({"peak_mb": (peak - before) / 1024, "logits_mb": N * C * V * 4 / 2**20}))
"""


def test_log_probs_do_not_hold_a_full_vocabulary_log_softmax(tmp_path):
    """150k vocabulary, 16 × 64 completion tokens: the logits alone are 586 MB. The
    selective log-softmax (logit − logsumexp, a few rows at a time) keeps the extra
    memory of forward + backward well under the full log-softmax's, same values."""
    import json
    import subprocess
    import sys

    runs = {}
    for mode in ("full", "selective"):
        done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, mode, str(tmp_path / mode)],
                              capture_output=True, text=True, check=True)
        runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    full, selective = runs["full"], runs["selective"]
    assert torch.allclose(torch.load(tmp_path / "full"), torch.load(tmp_path / "selective"), atol=1e-6)
    # measured: full ≈ 3.0× the logits' size; selective ≈ 2.1× (the logits, their
    # gradient, one chunk of temporaries)
    assert selective["peak_mb"] < 2.3 * selective["logits_mb"], runs
    assert selective["peak_mb"] < 0.75 * full["peak_mb"], runs


def test_inverse_cdf_sampling_draws_from_the_tempered_softmax():
    from grao_pipeline.alignment.generation.sampling import InverseCDFSampling

    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -30.0, float("-inf")])
    for temperature in (1.0, 0.5):
        n = 200_000
        scores = InverseCDFSampling(temperature)(None, logits.expand(n, -1).clone())
        assert ((scores == 0).sum(-1) == 1).all() and ((scores == 0) | (scores == float("-inf"))).all()
        draws = scores.argmax(-1)
        freq = torch.bincount(draws, minlength=6).float() / n
        expected = torch.softmax(logits / temperature, -1)
        assert torch.allclose(freq, expected, atol=4e-3), (temperature, freq, expected)
        assert freq[5] == 0  # a -inf logit is never drawn


def test_suppress_eos_only_before_min_new_tokens():
    from grao_pipeline.alignment.generation.sampling import SuppressEOS

    suppress = SuppressEOS(eos=[1, 3], prompt_length=4, min_new_tokens=2)
    for length, suppressed in ((4, True), (5, True), (6, False)):
        scores = suppress(torch.zeros(2, length, dtype=torch.long), torch.zeros(2, 5))
        assert (scores[:, [1, 3]] == float("-inf")).all() == suppressed
        assert (scores[:, [0, 2, 4]] == 0).all()


def _member_batch(tok):
    """Two prompts of different lengths (left padding), M = 3 completions each, of
    different lengths (right padding after EOS)."""
    enc = encode_prompts(tok, ["hi", "a longer prompt with more tokens"])
    texts = ["fine", "ok then, why not", "no", "yes", "maybe later today", "sure thing"]
    ids, mask = encode_completions(tok, texts, 7, tok.eos_token_id)
    return enc, ids, mask


@pytest.mark.parametrize("one_token_prompts", [False, True])
@pytest.mark.parametrize("return_hidden", [False, True])
def test_prompt_run_once_equals_whole_rows_in_values_and_gradients(tiny, return_hidden,
                                                                   one_token_prompts):
    """member_logps' shared-prompt forward (prompt once, KV cache repeated per member;
    a one-token prompt has no cache and runs with each member) must give the whole-row
    forward's log-probs, hidden states and parameter gradients."""
    from grao_pipeline.alignment.logprobs import shared_prompt_token_logps
    from grao_pipeline.alignment.tokens import EncodedPrompts

    model, tok = tiny
    enc, ids, mask = _member_batch(tok)
    if one_token_prompts:
        enc = EncodedPrompts(enc.ids[:, -1:], enc.mask[:, -1:])
    results = []
    for shared in (True, False):
        model.zero_grad(set_to_none=True)
        if shared:
            out = shared_prompt_token_logps(model, enc.ids, enc.mask, ids, mask, return_hidden)
        else:
            out = token_logps(model, enc.ids.repeat_interleave(3, 0), enc.mask.repeat_interleave(3, 0),
                              ids, mask, return_hidden)
        logps, hidden = out if return_hidden else (out, None)
        weights = torch.linspace(0.5, 2.0, logps.numel()).view_as(logps)  # every position counts
        loss = (logps * mask * weights).sum() + (hidden.pow(2).mean() if return_hidden else 0)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((logps * mask, None if hidden is None else hidden * mask[..., None], grads))
    (shared_logps, shared_hidden, shared_grads), (whole_logps, whole_hidden, whole_grads) = results
    assert torch.allclose(shared_logps, whole_logps, atol=1e-5)
    if return_hidden:
        assert torch.allclose(shared_hidden, whole_hidden, atol=1e-5)
    assert shared_grads.keys() == whole_grads.keys()
    for name in whole_grads:
        assert whole_grads[name].abs().max() > 0, name  # the comparison means something
        assert torch.allclose(shared_grads[name], whole_grads[name], atol=1e-5, rtol=1e-4), name


def test_member_logps_shares_the_prompt_only_where_it_is_exact(tiny):
    """Where sharing applies: one forward of the B prompts but their last token, then
    B·M member rows of C positions (the last prompt token and the completion but its
    last token). B·M whole rows under activation checkpointing, whose recompute would
    extend the KV cache twice."""
    from grao_pipeline.alignment.methods.base import member_logps

    model, tok = tiny
    enc, ids, mask = _member_batch(tok)
    batch_sizes = []
    hook = model.model.register_forward_hook(  # token positions, embedded by the caller or not
        lambda mod, args, kwargs, out: batch_sizes.append(
            (kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]).shape[:2]),
        with_kwargs=True)
    shared = member_logps(model, enc.ids, enc.mask, ids.view(2, 3, -1), mask.view(2, 3, -1))
    c = ids.shape[1]
    assert [tuple(s) for s in batch_sizes] == [(2, enc.ids.shape[1] - 1), (6, c)]
    batch_sizes.clear()
    model.train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    whole = member_logps(model, enc.ids, enc.mask, ids.view(2, 3, -1), mask.view(2, 3, -1))
    hook.remove()
    assert [tuple(s) for s in batch_sizes] == [(6, enc.ids.shape[1] + c)]
    m = mask.view(2, 3, -1).bool()
    assert torch.allclose(shared[m], whole[m], atol=1e-5)
