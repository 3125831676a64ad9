"""One loss per method: pure tensor functions, ``(loss, metrics)`` out.

Conventions: B prompts, G samples per prompt, T tokens (right-padded, masked).
Log-likelihoods ℓ(s) are length-normalised: the mean log-prob over the sequence's
unmasked tokens. ``metrics`` values are detached Python floats.
"""

from __future__ import annotations

import torch

from grao_pipeline.alignment.rollout import sequence_mean


def sft_loss(logps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Length-normalised NLL of reference answers: mean over rows of −ℓ(y).

    Args:
        logps: [N, T] per-token log-probs of the answers.
        mask: [N, T] 1 on answer tokens.
    """
    nll = -sequence_mean(logps, mask)
    loss = nll.mean()
    return loss, {"loss": loss.item(), "nll": loss.item()}


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π || π_ref) on tokens sampled from π: e^{Δ} − Δ − 1,
    Δ = log π_ref − log π. Non-negative, unbiased. Shapes broadcast elementwise."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1.0


def grao_loss(
    sample_logps: torch.Tensor,
    sample_mask: torch.Tensor,
    ref_answer_logps: torch.Tensor,
    ref_answer_mask: torch.Tensor,
    advantages: torch.Tensor,
    ref_advantages: torch.Tensor,
    beta: float,
    lam: float,
    exploration: bool = True,
    old_sample_logps: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    kl_per_token: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """GRAO loss, the negative of ../shared/GRAO.md §2's objective, averaged over prompts:

        J = (1/G) Σ_i [ Â_i·ℓ(o_i)  +  β·Â_y·ℓ(y)  +  λ·Â_i·(ℓ(o_i) − ℓ(y)) ]
              exploration   imitation      alignment regulariser

    Args:
        sample_logps: [B, G, T] per-token log-probs of the samples under π_θ.
        sample_mask: [B, G, T] 1 on completion tokens (through the first EOS).
        ref_answer_logps: [B, T'] per-token log-probs of the reference answers y.
        ref_answer_mask: [B, T'].
        advantages: [B, G] Â_i (no gradient).
        ref_advantages: [B] Â_y (no gradient).
        beta, lam: β and λ.
        exploration: False drops Â_i·ℓ(o_i) (ablation).
        old_sample_logps: [B, G, T] log-probs at rollout time. When given (several
            epochs per rollout), Â_i·ℓ(o_i) in the exploration and regulariser terms
            becomes the PPO clipped surrogate mean_t min(ρ_t·Â_i, clip(ρ_t, 1±ε)·Â_i),
            ρ_t = π_θ/π_old per token; its gradient equals the on-policy one at ρ = 1.
            None = on-policy (the paper).
        clip_eps: ε of the ratio clip.
        kl_per_token: [B, G, T] optional per-token KL to a frozen reference policy.
        kl_coef: its weight (the KL's length-normalised mean is added to the loss).

    Returns:
        loss: scalar.
        metrics: each term's value (as a loss, i.e. negated), its share of the summed
        magnitudes, mean ℓ(o) and ℓ(y).
    """
    ell_samples = sequence_mean(sample_logps, sample_mask)          # [B, G]
    ell_ref = sequence_mean(ref_answer_logps, ref_answer_mask)      # [B]

    if old_sample_logps is None:
        weighted_samples = advantages * ell_samples                 # Â_i·ℓ(o_i), [B, G]
    else:
        ratio = torch.exp(sample_logps - old_sample_logps)
        adv_t = advantages.unsqueeze(-1)
        surrogate = torch.minimum(ratio * adv_t,
                                  torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv_t)
        weighted_samples = sequence_mean(surrogate, sample_mask)

    exploration_term = weighted_samples.mean(dim=1) if exploration else ell_ref.new_zeros(())
    imitation_term = beta * ref_advantages * ell_ref
    regulariser_term = lam * (weighted_samples - advantages * ell_ref[:, None]).mean(dim=1)

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
        metrics["kl_to_ref"] = kl.item()

    metrics.update({
        "loss": loss.item(),
        "logp/samples": ell_samples.mean().item(),
        "logp/reference": ell_ref.mean().item(),
    })
    return loss, metrics
