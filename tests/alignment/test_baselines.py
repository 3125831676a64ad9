"""Baselines on the shared loop: hand-computed GAE/DPO, and on a tiny model each
method's loss falls when optimised and every trainable parameter changes."""

import dataclasses
import math

import pytest
import torch

from grao_pipeline.alignment.advantages import gae, whiten
from grao_pipeline.alignment.losses import dpo_loss, grpo_loss
from grao_pipeline.alignment.methods.dpo import DPOConfig, DPOMethod, synthetic_pairs
from grao_pipeline.alignment.methods.grao import GRAOMethod, GRAOMethodConfig
from grao_pipeline.alignment.methods.grpo import GRPOConfig, GRPOMethod
from grao_pipeline.alignment.methods.ppo import PPOConfig, PPOMethod
from grao_pipeline.alignment.trainer import train
from tests.fixtures import tiny_model
from tests.helpers import length_reward

ROLLOUT = dict(steps=1, prompts_per_step=2, num_generations=3, max_completion_tokens=6,
               learning_rate=1e-3, weight_decay=0.0, mixed_precision="fp32", show_progress=False,
               temperature=1.0)


def test_gae_hand_computed():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, gae_lambda=0.5)
    # δ2 = 0.9; δ1 = -0.1 → A1 = -0.1 + 0.5·0.9; δ0 = -0.3 → A0 = -0.3 + 0.5·0.35
    assert adv[0].tolist() == pytest.approx([-0.125, 0.35, 0.9])
    assert ret[0].tolist() == pytest.approx([0.375, 0.55, 1.0])
    # a completion that ended at t=1: nothing after it counts
    adv, _ = gae(torch.tensor([[0.0, 1.0, 5.0]]), values, torch.tensor([[1, 1, 0]]), 1.0, 0.5)
    assert adv[0].tolist() == pytest.approx([0.1, 0.8, 0.0])


def test_whiten_uses_masked_entries_only():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    w = whiten(x, torch.tensor([[1, 1, 0]]))
    assert w[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)


def test_dpo_loss_hand_computed():
    loss, m = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                       torch.tensor([-2.0]), beta=0.5)
    # β·[(−1 + 2) − (−3 + 2)] = 1 → −log σ(1)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))))
    assert m["rewards/accuracy"] == 1.0 and m["rewards/margin"] == pytest.approx(1.0)


def test_grpo_on_policy_gradient_is_the_advantage_weighted_mean():
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, _ = grpo_loss(logps, mask, torch.tensor([1.0, -2.0]))
    loss.backward()
    # grpo aggregation: −(1/N) Σ_i A_i / |o_i| per token
    assert torch.allclose(logps.grad, torch.tensor([[-0.25, -0.25], [1.0, 0.0]]))


def dpo_rows(rows):
    return [{"prompt": r["prompt"], "chosen": r["reference"], "rejected": "no"} for r in rows]


def make(method, tok, model):
    if method == "grpo":
        cfg = GRPOConfig(**ROLLOUT, epochs_per_rollout=2, kl_coef=0.04)
        return GRPOMethod(tok, length_reward, cfg), cfg
    if method == "ppo":
        cfg = PPOConfig(**ROLLOUT, epochs_per_rollout=2)
        return PPOMethod(tok, length_reward, cfg, model.config.hidden_size), cfg
    if method == "grao":
        cfg = GRAOMethodConfig(**ROLLOUT)
        return GRAOMethod(tok, length_reward, cfg), cfg
    cfg = DPOConfig(steps=1, batch_size=3, learning_rate=1e-3, weight_decay=0.0,
                    mixed_precision="fp32", show_progress=False, max_completion_tokens=6)
    return DPOMethod(tok, length_reward, cfg), cfg


@pytest.mark.parametrize("method", ["grpo", "ppo", "dpo", "grao"])
def test_loss_falls_when_optimised_on_a_fixed_batch(tokenizer, rows, method):
    torch.manual_seed(0)
    model, tok = tiny_model(tokenizer, seed=0)
    m, _ = make(method, tok, model)
    m.setup(model)
    data = dpo_rows(rows) if method == "dpo" else rows
    batch, _ = m.prepare(model, data[: m.rows_per_step])
    params = [p for mod in (model, *m.extra_modules) for p in mod.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss, _ = m.loss(model, batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses


@pytest.mark.parametrize("method", ["grpo", "ppo", "dpo"])
def test_one_step_changes_every_trainable_parameter(tokenizer, rows, method):
    model, tok = tiny_model(tokenizer, seed=0)
    m, cfg = make(method, tok, model)
    modules = {"policy": model, **{f"extra{i}": e for i, e in enumerate(m.extra_modules)}}
    before = {(k, n): p.detach().clone() for k, mod in modules.items() for n, p in mod.named_parameters()}
    log = train(model, m, dpo_rows(rows) if method == "dpo" else rows, cfg).log
    assert len(log) == 1 and math.isfinite(log[0]["loss"])
    after = {(k, n): p for k, mod in modules.items() for n, p in mod.named_parameters()}
    unchanged = [key for key, p in after.items() if torch.equal(before[key], p.detach())]
    assert not unchanged, unchanged
    if method == "ppo":
        assert "kl_to_start" in log[0] and "loss/value" in log[0]


def test_grpo_dapo_gradient_accumulation_gives_the_same_update(tokenizer, rows):
    grads = []
    for chunks in (1, 2):
        model, tok = tiny_model(tokenizer, seed=0)
        cfg = GRPOConfig(**{**ROLLOUT, "grad_accum_chunks": chunks}, aggregation="dapo", kl_coef=0.0)
        train(model, GRPOMethod(tok, length_reward, cfg), rows, cfg)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-7, rtol=1e-4), name


def test_synthetic_pairs_are_best_against_worst_and_marked(tiny, rows):
    model, tok = tiny
    torch.manual_seed(0)
    pairs, report = synthetic_pairs(model, tok, length_reward, rows, candidates=3,
                                    max_new_tokens=6, temperature=1.0)
    assert report["samples"] == 3 * len(rows)
    assert report["pairs"] + report["tied_prompts"] == len(rows) and pairs
    for p in pairs:
        assert p["synthetic"] and len(p["chosen"]) > len(p["rejected"]) and p["reward_margin"] > 0


def test_resumed_run_keeps_the_start_policy_frozen(tokenizer, rows, tmp_path):
    """setup() runs before the checkpoint loads: DPO's start policy is the start, not step k."""
    def fresh():
        model, tok = tiny_model(tokenizer, seed=0)
        cfg = DPOConfig(steps=2, batch_size=3, learning_rate=1e-2, weight_decay=0.0,
                        mixed_precision="fp32", show_progress=False, max_completion_tokens=6,
                        checkpoint_dir=str(tmp_path), checkpoint_every=1)
        return model, DPOMethod(tok, length_reward, cfg), cfg

    model, method, cfg = fresh()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, method, dpo_rows(rows), cfg)
    model, method, cfg = fresh()
    resumed = train(model, method, dpo_rows(rows), dataclasses.replace(cfg, steps=3)).log
    assert [r["step"] for r in resumed] == [1, 2, 3]
    for name, p in method.start_policy.named_parameters():
        assert torch.equal(p, start[name]), name
    assert any(not torch.equal(p.detach(), start[n]) for n, p in model.named_parameters())
