import pytest
import torch

from grao_pipeline.alignment.rollout import (
    check_prompt_lengths,
    completion_mask,
    encode_completions,
    encode_prompts,
    sample_completions,
    token_logps,
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


def test_prompt_longer_than_limit_is_refused(tokenizer):
    with pytest.raises(ValueError, match="exceeds max_prompt_tokens=5"):
        check_prompt_lengths(tokenizer, ["a rather long prompt " * 3], 5, 4, 512)
    with pytest.raises(ValueError, match="exceed the model context"):
        check_prompt_lengths(tokenizer, ["hi"], 500, 100, 512)
