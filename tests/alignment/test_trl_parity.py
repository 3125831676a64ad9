"""Our GRPO and DPO losses against TRL 1.16's own code on the same tensors.

TRL computes these losses inside its trainers, so each test calls the trainer's
``_compute_loss`` on a stand-in ``self`` whose model returns the given log-probs.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

from grao_pipeline.alignment.advantages import group_advantages
from grao_pipeline.alignment.losses import dpo_loss, grpo_loss

N, T, MAX_LEN = 6, 5, 7


class OneProcess:
    device = torch.device("cpu")
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def toy_rollout(seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(N, T, generator=g) * 3).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(N, T, generator=g)
    start = logps.detach() + 0.2 * torch.randn(N, T, generator=g)
    mask = torch.ones(N, T, dtype=torch.long)
    mask[0, 3:] = 0
    mask[4, 1:] = 0
    adv = torch.randn(N, generator=g)
    return logps, old, start, mask, adv


def trl_grpo_loss(logps, old, start, mask, adv, aggregation, kl_coef):
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=kl_coef, loss_type=aggregation,
        epsilon_low=0.2, epsilon_high=0.28, use_vllm=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=MAX_LEN,
        accelerator=OneProcess(), _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list)},
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1))
    inputs = {"prompt_ids": torch.zeros(N, 2, dtype=torch.long), "prompt_mask": torch.ones(N, 2),
              "completion_ids": torch.zeros(N, T, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": start,
              "num_items_in_batch": mask.sum()}
    return GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("kl_coef", [0.0, 0.04])
def test_grpo_loss_and_gradient_match_trl(aggregation, kl_coef):
    logps, old, start, mask, adv = toy_rollout()
    theirs = trl_grpo_loss(logps, old, start, mask, adv, aggregation, kl_coef)
    (their_grad,) = torch.autograd.grad(theirs, logps)
    ours, _ = grpo_loss(logps, mask, adv, old_logps=old, start_logps=start, kl_coef=kl_coef,
                        clip_eps_low=0.2, clip_eps_high=0.28, aggregation=aggregation,
                        max_completion_length=MAX_LEN, num_items_in_batch=float(mask.sum()))
    (our_grad,) = torch.autograd.grad(ours, logps)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    assert torch.allclose(our_grad, their_grad, atol=1e-6)


def test_group_advantages_match_trl_normalisation():
    rewards = torch.tensor([[0.1, 0.5, 0.2, 0.9], [1.0, 1.0, 1.0, 1.0], [0.3, -0.2, 0.0, 0.4]])
    mean = rewards.mean(1, keepdim=True)
    theirs = (rewards - mean) / (nanstd(rewards, dim=1, keepdim=True) + 1e-4)
    ours = group_advantages(rewards, None, eps=1e-4, std_correction=1).samples
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_dpo_sigmoid_loss_matches_trl():
    g = torch.Generator().manual_seed(1)
    b, length = 4, 6
    per_token = -torch.rand(2 * b, length - 1, generator=g)  # TRL's shifted log-probs
    completion_mask = torch.zeros(2 * b, length, dtype=torch.long)
    completion_mask[:, 2:] = 1
    completion_mask[1, 4:] = 0
    shift_mask = completion_mask[:, 1:]
    log_probs = (per_token * shift_mask).requires_grad_()  # fused head zeroes ignored labels
    start = -torch.rand(2 * b, generator=g) * 4
    outputs = SimpleNamespace(log_probs=log_probs, entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token),
                              is_top1=torch.zeros_like(per_token, dtype=torch.bool))
    fake = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=OneProcess(), aux_loss_enabled=False,
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=["sigmoid"], loss_weights=[1.0], use_weighting=False, beta=0.1,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * b, length, dtype=torch.long),
              "attention_mask": torch.ones(2 * b, length, dtype=torch.long),
              "completion_mask": completion_mask,
              "ref_chosen_logps": start[:b], "ref_rejected_logps": start[b:]}
    theirs = DPOTrainer._compute_loss(fake, lambda **kw: outputs, inputs, return_outputs=False)
    summed = log_probs.sum(1)
    ours, metrics = dpo_loss(summed[:b], summed[b:], start[:b], start[b:], beta=0.1)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    (g_theirs,) = torch.autograd.grad(theirs, log_probs, retain_graph=True)
    (g_ours,) = torch.autograd.grad(ours, log_probs)
    assert torch.allclose(g_ours, g_theirs, atol=1e-7)
    assert metrics["rewards/margin"] == pytest.approx(
        fake._metrics["train"]["rewards/margins"][0], abs=1e-6)
