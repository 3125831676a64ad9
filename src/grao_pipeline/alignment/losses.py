"""One loss per method: pure tensor functions, ``(loss, metrics)`` out.

Conventions: B prompts, G samples per prompt, T tokens (right-padded, masked).
Log-likelihoods ℓ(s) are length-normalised: the mean log-prob over the sequence's
unmasked tokens. ``metrics`` values are detached Python floats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grao_pipeline.alignment.logprobs import sequence_mean


def sft_loss(logps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Length-normalised NLL of reference answers: mean over rows of −ℓ(y).

    Args:
        logps: [N, T] per-token log-probs of the answers.
        mask: [N, T] 1 on answer tokens.
    """
    nll = -sequence_mean(logps, mask)
    loss = nll.mean()
    return loss, {"loss": loss.item(), "nll": loss.item()}


def k3_kl(logps: torch.Tensor, start_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π || π_start) on tokens sampled from π: e^{Δ} − Δ − 1,
    Δ = log π_start − log π. Non-negative, unbiased. Shapes broadcast elementwise."""
    delta = start_logps - logps
    return torch.exp(delta) - delta - 1.0


def grao_loss(
    sample_logps: torch.Tensor,
    sample_mask: torch.Tensor,
    reference_logps: torch.Tensor,
    reference_mask: torch.Tensor,
    advantages: torch.Tensor,
    reference_advantages: torch.Tensor,
    beta: float,
    lam: float,
    exploration: bool = True,
    old_sample_logps: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    kl_per_token: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    use_reference: bool = True,
) -> tuple[torch.Tensor, dict]:
    """GRAO loss, the negative of the objective in docs/method.md, averaged over prompts:

        J = (1/G) Σ_i [ Â_i·ℓ(o_i)  +  β·Â_y·ℓ(y)  +  λ·Â_i·(ℓ(o_i) − ℓ(y)) ]
              exploration   imitation      alignment regulariser

    Args:
        sample_logps: [B, G, T] per-token log-probs of the samples under π_θ.
        sample_mask: [B, G, T] 1 on completion tokens (through the first EOS).
        reference_logps: [B, T'] per-token log-probs of the reference answers y.
        reference_mask: [B, T'].
        advantages: [B, G] Â_i (no gradient).
        reference_advantages: [B] Â_y (no gradient).
        beta, lam: β and λ.
        exploration: False drops Â_i·ℓ(o_i) (ablation).
        old_sample_logps: [B, G, T] log-probs at rollout time. When given (several
            epochs per rollout), Â_i·ℓ(o_i) in the exploration and regulariser terms
            becomes the PPO clipped surrogate mean_t min(ρ_t·Â_i, clip(ρ_t, 1±ε)·Â_i),
            ρ_t = π_θ/π_old per token; its gradient equals the on-policy one at ρ = 1.
            None = on-policy (the paper).
        clip_eps: ε of the ratio clip.
        kl_per_token: [B, G, T] optional per-token KL to the frozen start policy.
        kl_coef: its weight (the KL's length-normalised mean is added to the loss).
        use_reference: False takes y out of the objective: no imitation term, and the
            regulariser keeps only λ·Â_i·ℓ(o_i), so ℓ(y) gets no gradient (the "no
            imitation" ablation; β = 0 alone still pulls on ℓ(y) through the regulariser).
            ℓ(y) is still reported, to show whether y's likelihood moves without it.

    Returns:
        loss: scalar.
        metrics: each term's value (as a loss, i.e. negated), its share of the summed
        magnitudes, mean ℓ(o) and ℓ(y).
    """
    ell_samples = sequence_mean(sample_logps, sample_mask)          # [B, G]
    ell_reference = sequence_mean(reference_logps, reference_mask)      # [B]

    if old_sample_logps is None:
        weighted_samples = advantages * ell_samples                 # Â_i·ℓ(o_i), [B, G]
    else:
        ratio = torch.exp(sample_logps - old_sample_logps)
        adv_t = advantages.unsqueeze(-1)
        surrogate = torch.minimum(ratio * adv_t,
                                  torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv_t)
        weighted_samples = sequence_mean(surrogate, sample_mask)

    exploration_term = weighted_samples.mean(dim=1) if exploration else ell_reference.new_zeros(())
    if use_reference:
        imitation_term = beta * reference_advantages * ell_reference
        regulariser_term = lam * (weighted_samples - advantages * ell_reference[:, None]).mean(dim=1)
    else:
        imitation_term = ell_reference.new_zeros(ell_reference.shape)
        regulariser_term = lam * weighted_samples.mean(dim=1)

    exploration_loss = -exploration_term.mean() if exploration else exploration_term
    imitation_loss = -imitation_term.mean()
    regulariser_loss = -regulariser_term.mean()
    loss = exploration_loss + imitation_loss + regulariser_loss

    metrics = {
        "loss/exploration": exploration_loss.item(),
        "loss/imitation": imitation_loss.item(),
        "loss/regulariser": regulariser_loss.item(),
    }
    total = sum(abs(v) for v in metrics.values())
    for name in ("exploration", "imitation", "regulariser"):
        metrics[f"share/{name}"] = abs(metrics[f"loss/{name}"]) / total if total > 0 else 0.0

    if kl_per_token is not None and kl_coef > 0:
        kl = sequence_mean(kl_per_token, sample_mask).mean()
        loss = loss + kl_coef * kl
        metrics["kl_to_start"] = kl.item()

    metrics.update({
        "loss": loss.item(),
        "logp/samples": ell_samples.mean().item(),
        "logp/reference": ell_reference.mean().item(),
    })
    return loss, metrics


GRPO_AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")


def grpo_loss(
    logps: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logps: torch.Tensor | None = None,
    start_logps: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    aggregation: str = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """GRPO clipped-surrogate loss with a k3 KL to the frozen start policy, TRL 1.16's formulas.

    Args:
        logps: [N, T] per-token log-probs under π_θ of N = B·G sampled completions.
        mask: [N, T] completion mask.
        advantages: [N] group-normalised advantages (one per completion).
        old_logps: [N, T] log-probs at rollout time; None = on-policy (ratio 1, detached).
        start_logps: [N, T] log-probs under the frozen start policy, required if kl_coef > 0.
        kl_coef: β of the per-token k3 KL term.
        clip_eps_low, clip_eps_high: ratio clip range [1 − low, 1 + high].
        aggregation: how per-token losses become a scalar
            ``grpo``: mean over tokens per sequence, then over sequences;
            ``bnpo``: mean over all tokens of the (micro-)batch;
            ``dr_grpo``: sum over tokens / (N · max_completion_length);
            ``dapo``: sum over tokens / ``num_items_in_batch`` (tokens of the whole
            rollout batch, so chunked accumulation gives the same update).
    """
    if aggregation not in GRPO_AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {GRPO_AGGREGATIONS}, got {aggregation!r}")
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    clipped = torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * adv, clipped * adv)
    maskf = mask.to(per_token.dtype)
    metrics = {}
    if kl_coef != 0.0:
        if start_logps is None:
            raise ValueError("grpo_loss: kl_coef > 0 needs start_logps")
        per_token_kl = k3_kl(logps, start_logps)
        per_token = per_token + kl_coef * per_token_kl
        metrics["kl_to_start"] = ((per_token_kl * maskf).sum() / maskf.sum().clamp(min=1.0)).item()

    if aggregation == "grpo":
        loss = ((per_token * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0)).mean()
    elif aggregation == "bnpo":
        loss = (per_token * maskf).sum() / maskf.sum().clamp(min=1.0)
    elif aggregation == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("grpo_loss: dr_grpo needs max_completion_length")
        loss = (per_token * maskf).sum() / (per_token.shape[0] * max_completion_length)
    else:
        normaliser = maskf.sum() if num_items_in_batch is None else num_items_in_batch
        loss = (per_token * maskf).sum() / max(float(normaliser), 1.0)

    clipped_out = ((ratio < 1 - clip_eps_low) & (adv < 0)) | ((ratio > 1 + clip_eps_high) & (adv > 0))
    metrics.update({"loss": loss.item(),
                    "clip_ratio": ((clipped_out.float() * maskf).sum() / maskf.sum().clamp(min=1.0)).item()})
    return loss, metrics


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
             start_chosen_logps: torch.Tensor, start_rejected_logps: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, dict]:
    """Sigmoid DPO loss, mean over pairs: −log σ(β·[(c − c_start) − (r − r_start)]).

    All inputs [N]: *summed* (not length-normalised) log-probs of the chosen and
    rejected answers under the policy and the frozen start policy (TRL's "ref" model), as in TRL.
    """
    chosen_rewards = beta * (chosen_logps - start_chosen_logps)
    rejected_rewards = beta * (rejected_logps - start_rejected_logps)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, {
        "loss": loss.item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margin": (chosen_rewards - rejected_rewards).mean().item(),
    }


def ppo_loss(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor,
             advantages: torch.Tensor, values: torch.Tensor, old_values: torch.Tensor,
             returns: torch.Tensor, clip_eps: float = 0.2, value_clip: float = 0.2,
             value_coef: float = 0.1) -> tuple[torch.Tensor, dict]:
    """PPO clipped policy loss plus clipped value loss, token-level masked means.

    All inputs [N, T]: per-token log-probs (now / rollout), GAE advantages (already
    whitened), value predictions (now / rollout) and GAE returns.
    """
    maskf = mask.to(logps.dtype)

    def masked_mean(x: torch.Tensor) -> torch.Tensor:
        return (x * maskf).sum() / maskf.sum().clamp(min=1.0)

    ratio = torch.exp(logps - old_logps)
    pg_losses = torch.max(-advantages * ratio,
                          -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps))
    pg_loss = masked_mean(pg_losses)
    values_clipped = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
    vf_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (values_clipped - returns) ** 2))
    loss = pg_loss + value_coef * vf_loss
    return loss, {"loss": loss.item(), "loss/policy": pg_loss.item(), "loss/value": vf_loss.item(),
                  "clip_ratio": masked_mean((torch.abs(ratio - 1) > clip_eps).float()).item()}


def shaped_off_policy_loss(logps: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                           gamma: float, normaliser: float) -> tuple[torch.Tensor, dict]:
    """LUFFY's term for off-policy tokens: −Â · f(π), f(π) = π / (π + γ), unclipped,
    summed over tokens and divided by ``normaliser`` (the step's token count).

    Args:
        logps: [N, T] log-probs under π_θ of the off-policy answers (y).
        mask: [N, T] answer mask.
        advantages: [N] their group-normalised advantages.
    """
    probs = logps.exp()
    shaped = probs / (probs + gamma)
    per_token = -advantages.unsqueeze(1) * shaped
    maskf = mask.to(per_token.dtype)
    loss = (per_token * maskf).sum() / max(float(normaliser), 1.0)
    return loss, {"off_policy_loss": loss.item(),
                  "off_policy_prob": ((probs * maskf).sum() / maskf.sum().clamp(min=1.0)).item()}
