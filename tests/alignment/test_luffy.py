"""LUFFY: the shaped off-policy term by hand, and GRPO exactly when the off-policy part
is off."""

import pytest
import torch

from grao_pipeline.alignment.losses import shaped_off_policy_loss
from grao_pipeline.alignment.methods.base import member_logps
from grao_pipeline.alignment.methods.grpo import GRPOConfig, GRPOMethod
from grao_pipeline.alignment.methods.luffy import LUFFYConfig, LUFFYMethod
from tests.alignment.test_grpo_sft import ROLLOUT, loss_and_grads
from tests.fixtures import tiny_model
from tests.helpers import length_reward


def test_shaped_off_policy_loss_by_hand():
    logps = torch.log(torch.tensor([[0.5, 0.1], [0.9, 0.2]])).requires_grad_()
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, _ = shaped_off_policy_loss(logps, mask, torch.tensor([2.0, -1.0]), gamma=0.1, normaliser=4.0)
    # −Σ Â·p/(p+γ) / 4 over the three real tokens
    by_hand = -(2.0 * (0.5 / 0.6 + 0.1 / 0.2) - 1.0 * (0.9 / 1.0)) / 4.0
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    loss.backward()
    # d/dlogp of −Â·p/(p+γ) = −Â·γp/(p+γ)², divided by 4; padding gets none
    expected = torch.tensor([[-2.0 * 0.1 * 0.5 / 0.6**2, -2.0 * 0.1 * 0.1 / 0.2**2],
                             [1.0 * 0.1 * 0.9 / 1.0**2, 0.0]]) / 4.0
    assert torch.allclose(logps.grad, expected, atol=1e-6)


def test_without_the_off_policy_part_luffy_is_grpo_token_mean(tokenizer, rows):
    model, tok = tiny_model(tokenizer, seed=0)
    grpo = GRPOMethod(tok, length_reward, GRPOConfig(**ROLLOUT, aggregation="dapo"))
    _, grpo_loss, _, grpo_grads = loss_and_grads(grpo, model, rows[:2])
    luffy = LUFFYMethod(tok, length_reward, LUFFYConfig(**ROLLOUT, off_policy=False))
    _, luffy_loss, _, luffy_grads = loss_and_grads(luffy, model, rows[:2])
    assert luffy_loss.item() == grpo_loss.item()
    for name, g in grpo_grads.items():
        assert torch.equal(g, luffy_grads[name]), name


def test_with_the_reference_in_the_group_the_loss_adds_its_shaped_term(tokenizer, rows):
    model, tok = tiny_model(tokenizer, seed=0)
    method = LUFFYMethod(tok, length_reward, LUFFYConfig(**ROLLOUT))
    batch, loss, metrics, _ = loss_and_grads(method, model, rows[:2])
    # y is scored too: its advantage comes from the G+1 group
    assert batch.reference_advantages.shape == (2,) and batch.reference_advantages.abs().sum() > 0
    assert batch.token_normaliser == float(batch.completion_mask.sum() + batch.reference_mask.sum())
    with torch.no_grad():
        logps = member_logps(model, batch.prompt_ids, batch.prompt_mask,
                             batch.reference_ids[:, None], batch.reference_mask[:, None])[:, 0]
        p = logps.exp()
        by_hand = (-(batch.reference_advantages[:, None] * p / (p + 0.1)) * batch.reference_mask).sum() \
            / batch.token_normaliser
    assert metrics["off_policy_loss"] == pytest.approx(by_hand.item(), rel=1e-5)
    assert loss.item() == pytest.approx(metrics["pg_loss"] + by_hand.item(), rel=1e-5)
    with pytest.raises(ValueError, match="aggregation = 'grpo': must be one of 'dapo'"):
        LUFFYConfig(**ROLLOUT, aggregation="grpo")
