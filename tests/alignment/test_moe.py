"""Mixture-of-experts policies through the same loop: a tiny random Mixtral and
Qwen2-MoE train with GRAO and GRPO; the router's load-balancing loss is in the loss
with its coefficient and logged, the router weights change, and per-expert token
counts are logged. A dense model is untouched."""

import pytest
import torch

from grao_pipeline.alignment.run import train_method
from tests.fixtures import tiny_model, tiny_moe_model
from tests.helpers import length_reward

ROLLOUT = dict(steps=2, prompts_per_step=2, num_generations=2, max_completion_tokens=6,
               learning_rate=1e-2, mixed_precision="fp32", show_progress=False, temperature=1.0)
SECTIONS = {"grao": ROLLOUT, "grpo": {**ROLLOUT, "kl_coef": 0.04}}


def routers(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("mlp.gate.weight")}


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
@pytest.mark.parametrize("method", ["grao", "grpo"])
def test_a_tiny_moe_trains_its_routers_with_the_aux_loss(tokenizer, rows, kind, method):
    policy = tiny_moe_model(tokenizer, seed=0, kind=kind)
    before = routers(policy.model)
    assert len(before) == 2
    trained, log, _ = train_method(method, policy, rows, SECTIONS, length_reward)
    for name, value in routers(trained.model).items():
        assert not torch.equal(value, before[name]), name
    for row in log:
        assert row["moe/aux_loss"] > 0 and row["moe/aux_coef"] == trained.model.config.router_aux_loss_coef
        counts = [row[f"moe/expert_tokens/{i}"] for i in range(4)]
        assert sum(counts) > 0 and 0.25 <= row["moe/max_expert_share"] <= 1.0
    assert trained.model.config.output_router_logits is False  # only on inside the loss


def test_the_aux_loss_is_added_with_its_coefficient(tokenizer, rows):
    def first_step(coef):
        cfg = {**ROLLOUT, "steps": 1, "router_aux_loss_coef": coef}
        _, log, _ = train_method("grao", tiny_moe_model(tokenizer, seed=0), rows, {"grao": cfg},
                                 length_reward)
        return log[0]

    without, weighted = first_step(0.0), first_step(0.5)
    assert without["moe/aux_loss"] == pytest.approx(weighted["moe/aux_loss"], rel=1e-6)
    assert weighted["loss"] - without["loss"] == pytest.approx(0.5 * weighted["moe/aux_loss"], rel=1e-4)


def test_the_expert_counts_cover_every_real_token_in_every_layer(tokenizer, rows):
    _, log, _ = train_method("grao", tiny_moe_model(tokenizer, seed=0, num_experts=4, top_k=2),
                             rows, {"grao": {**ROLLOUT, "steps": 1}}, length_reward)
    counts = sum(log[0][f"moe/expert_tokens/{i}"] for i in range(4))
    # every unpadded token of the G+1 members (prompt + completion), top-2, 2 layers
    assert counts % (2 * 2) == 0 and counts >= 2 * 2 * log[0]["tokens"]


def test_a_dense_model_logs_no_router_metrics(tokenizer, rows):
    _, log, _ = train_method("grao", tiny_model(tokenizer, seed=0), rows,
                             {"grao": {**ROLLOUT, "steps": 1}}, length_reward)
    assert not [k for k in log[0] if k.startswith("moe/")]
