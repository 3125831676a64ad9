"""Evaluation metrics (../shared/GRAO.md §5): RAS, win/tie/loss, NAG, KL, bootstrap CIs.

All per-prompt quantities are vectors over prompts; every summary is a mean of such a
vector with a percentile-bootstrap 95% interval over prompts.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from grao_pipeline.alignment.rollout import EncodedPrompts, completion_logits


def bootstrap_ci(values, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, float]:
    """Mean of ``values`` with a percentile-bootstrap interval: {"value", "ci_low", "ci_high"}."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return {"value": float(x.mean()), "ci_low": float(np.quantile(means, alpha)),
            "ci_high": float(np.quantile(means, 1.0 - alpha))}


def two_level_bootstrap_ci(values, resamples: int = 1000, seed: int = 0,
                           level: float = 0.95) -> dict[str, float]:
    """Mean of a [seeds, prompts] array with an interval that resamples seeds, then
    prompts within each drawn seed, so both sources of variance are in it."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError("two_level_bootstrap_ci needs a non-empty [seeds, prompts] array")
    s, p = x.shape
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, s, size=(resamples, s))
    prompt_idx = rng.integers(0, p, size=(resamples, s, p))
    means = x[seed_idx[..., None], prompt_idx].mean(axis=(1, 2))
    alpha = (1.0 - level) / 2.0
    return {"value": float(x.mean()), "ci_low": float(np.quantile(means, alpha)),
            "ci_high": float(np.quantile(means, 1.0 - alpha))}


def steps_to_reach(rewards, fraction: float = 0.9, window: int = 3) -> float:
    """First step (1-based) at which the rolling-mean reward has made ``fraction`` of
    its total gain, last smoothed value minus first. A flat or falling curve has no
    gain to reach: NaN, never a small (fast-looking) number."""
    r = np.convolve(np.asarray(rewards, dtype=np.float64), np.ones(window) / window, mode="valid")
    if r.size == 0:
        raise ValueError(f"steps_to_reach needs at least {window} steps")
    if r[-1] <= r[0]:
        return float("nan")
    target = r[0] + fraction * (r[-1] - r[0])
    return float(np.nonzero(r >= target)[0][0] + window)


def verdict_indicators(verdicts, prefix: str) -> dict[str, np.ndarray]:
    """{-1, 0, +1} verdicts -> per-prompt indicators of win / tie / loss, and net (w − l)."""
    v = np.asarray(verdicts)
    return {f"win_{prefix}": (v > 0).astype(float), f"tie_{prefix}": (v == 0).astype(float),
            f"loss_{prefix}": (v < 0).astype(float), f"net_win_{prefix}": v.astype(float)}


def per_prompt_metrics(rewards, verdicts_vs_reference, verdicts_vs_start, kl,
                       lengths) -> dict[str, np.ndarray]:
    """Per-prompt vectors for one model. RAS is the win rate against the reference
    (``ras``, with ``tie_``/``loss_vs_reference``); NAG the win rate against the
    starting model's answer (``nag``, with ``tie_``/``loss_``/``net_win_vs_start``)."""
    metrics = {"mean_reward": np.asarray(rewards, dtype=float)}
    metrics.update(verdict_indicators(verdicts_vs_reference, "vs_reference"))
    metrics["ras"] = metrics.pop("win_vs_reference")
    metrics.update(verdict_indicators(verdicts_vs_start, "vs_start"))
    metrics["nag"] = metrics.pop("win_vs_start")
    metrics["kl_from_start"] = np.asarray(kl, dtype=float)
    metrics["response_length"] = np.asarray(lengths, dtype=float)
    return metrics


@torch.no_grad()
def sequence_kl(model, start_model, prompts: EncodedPrompts, completion_ids: torch.Tensor,
                completion_mask: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Σ_t KL(π(·|ctx_t) || π_0(·|ctx_t)) along each completion, exact over the vocabulary.

    Exact per-position KL works for greedy answers too, where a sampled estimator
    would be biased. Inputs [N, P] / [N, C]; returns [N].
    """
    out = []
    for s in range(0, completion_ids.shape[0], chunk):
        args = (prompts.ids[s:s + chunk], prompts.mask[s:s + chunk],
                completion_ids[s:s + chunk], completion_mask[s:s + chunk])
        lp = F.log_softmax(completion_logits(model, *args).float(), dim=-1)
        lq = F.log_softmax(completion_logits(start_model, *args).float(), dim=-1)
        kl_t = (lp.exp() * (lp - lq)).sum(-1)
        out.append((kl_t * completion_mask[s:s + chunk]).sum(-1))
    return torch.cat(out)
