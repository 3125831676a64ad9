"""grpo_sft = GRPO + μ·SFT(y): μ = 0 is GRPO exactly; otherwise the loss adds μ times
the hand-computed length-normalised NLL of y."""

import pytest
import torch

from grao_pipeline.alignment.methods.base import member_logps
from grao_pipeline.alignment.methods.grpo import GRPOConfig, GRPOMethod
from grao_pipeline.alignment.methods.grpo_sft import GRPOSFTConfig, GRPOSFTMethod
from tests.fixtures import tiny_model
from tests.helpers import length_reward

ROLLOUT = dict(steps=1, prompts_per_step=2, num_generations=3, max_completion_tokens=6,
               learning_rate=1e-3, weight_decay=0.0, mixed_precision="fp32", show_progress=False,
               temperature=1.0, kl_coef=0.0)


def loss_and_grads(method, model, rows):
    method.setup(model)
    torch.manual_seed(0)
    batch, _ = method.prepare(model, rows)
    model.zero_grad()
    loss, metrics = method.loss(model, batch)
    loss.backward()
    return batch, loss, metrics, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_mu_zero_is_grpo_exactly(tokenizer, rows):
    model, tok = tiny_model(tokenizer, seed=0)
    _, grpo, _, grpo_grads = loss_and_grads(GRPOMethod(tok, length_reward, GRPOConfig(**ROLLOUT)),
                                            model, rows[:2])
    _, mixed, _, mixed_grads = loss_and_grads(
        GRPOSFTMethod(tok, length_reward, GRPOSFTConfig(**ROLLOUT, sft_coef=0.0)), model, rows[:2])
    assert mixed.item() == grpo.item()
    for name, g in grpo_grads.items():
        assert torch.equal(g, mixed_grads[name]), name


def test_the_sft_term_is_mu_times_the_reference_nll(tokenizer, rows):
    model, tok = tiny_model(tokenizer, seed=0)
    method = GRPOSFTMethod(tok, length_reward, GRPOSFTConfig(**ROLLOUT, sft_coef=0.5))
    batch, loss, metrics, _ = loss_and_grads(method, model, rows[:2])
    with torch.no_grad():
        logps = member_logps(model, batch.prompt_ids, batch.prompt_mask,
                             batch.reference_ids[:, None], batch.reference_mask[:, None])[:, 0]
        mask = batch.reference_mask.float()
        by_hand = (-(logps * mask).sum(1) / mask.sum(1)).mean()
    assert metrics["sft_nll"] == pytest.approx(by_hand.item(), rel=1e-6)
    assert loss.item() == pytest.approx(metrics["pg_loss"] + 0.5 * by_hand.item(), rel=1e-6)
    with pytest.raises(ValueError, match="sft_coef = -1"):
        GRPOSFTConfig(**ROLLOUT, sft_coef=-1.0)


def test_grpo_never_reads_the_reference(tokenizer, rows):
    """Why the verifiable comparison runs GRPO once for every noise level: with the
    same problems and seed, wrong references leave its training untouched."""
    from grao_pipeline.alignment.trainer import train

    def trained(references):
        model, tok = tiny_model(tokenizer, seed=0)
        noisy = [{**r, "reference": y} for r, y in zip(rows, references, strict=True)]
        cfg = GRPOConfig(**{**ROLLOUT, "steps": 2, "kl_coef": 0.04})
        train(model, GRPOMethod(tok, length_reward, cfg), noisy, cfg)
        return model.state_dict()

    clean = trained([r["reference"] for r in rows])
    wrong = trained(["a different and wrong answer " * (i + 1) for i in range(len(rows))])
    assert all(torch.equal(clean[k], wrong[k]) for k in clean)
