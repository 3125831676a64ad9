"""Evaluation metrics (docs/method.md, "Metrics"): RAS, win/tie/loss, NAG, KL, bootstrap CIs.

All per-prompt quantities are vectors over prompts; every summary is a mean of such a
vector with a percentile-bootstrap 95% interval over prompts.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from grao_pipeline.alignment.logprobs import completion_logits
from grao_pipeline.alignment.tokens import EncodedPrompts


def _weighted_means(x: np.ndarray, w: np.ndarray, axis) -> np.ndarray:
    total = w.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (x * w).sum(axis=axis) / np.where(total > 0, total, 1), np.nan)


def _interval(x: np.ndarray, w: np.ndarray, means: np.ndarray, level: float) -> dict[str, float]:
    """Point estimate and percentile interval; resamples with no weight at all (every
    drawn prompt unmatched) carry no estimate and are left out."""
    if w.sum() <= 0:
        raise ValueError("no values with positive weight")
    alpha = (1.0 - level) / 2.0
    return {"value": float((x * w).sum() / w.sum()), "ci_low": float(np.nanquantile(means, alpha)),
            "ci_high": float(np.nanquantile(means, 1.0 - alpha))}


def bootstrap_ci(values, resamples: int = 1000, seed: int = 0, level: float = 0.95,
                 weights=None) -> dict[str, float]:
    """Mean of ``values`` with a percentile-bootstrap interval over prompts:
    {"value", "ci_low", "ci_high"}. ``weights`` (0/1 or any >= 0) make it a weighted
    mean, e.g. a win rate over the length-matched prompts only."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    return _interval(x, w, _weighted_means(x[idx], w[idx], axis=1), level)


def two_level_bootstrap_ci(values, resamples: int = 1000, seed: int = 0,
                           level: float = 0.95, weights=None) -> dict[str, float]:
    """Mean of a [seeds, prompts] array with an interval that resamples seeds, then
    prompts within each drawn seed, so both sources of variance are in it.
    ``weights``: as in ``bootstrap_ci``, same shape."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError("two_level_bootstrap_ci needs a non-empty [seeds, prompts] array")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    s, p = x.shape
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, s, size=(resamples, s))
    prompt_idx = rng.integers(0, p, size=(resamples, s, p))
    drawn = (seed_idx[..., None], prompt_idx)
    return _interval(x, w, _weighted_means(x[drawn], w[drawn], axis=(1, 2)), level)


def paired_difference(a, b, resamples: int = 1000, seed: int = 0, level: float = 0.95
                      ) -> dict[str, float | str]:
    """Mean of a − b for two methods scored on the same seeds and the same problems
    ([seeds, problems] arrays, row s and column p the same seed and problem in both),
    with the two-level bootstrap interval of the per-(seed, problem) difference: every
    resample draws the same seeds and problems for both methods, so what the problems
    share (an easy problem is easy for both) cancels instead of widening the interval.
    ``verdict`` is "win" (a above b) or "loss" only when the interval excludes 0, else
    "no difference"."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired_difference needs the same seeds and problems for both: "
                         f"shapes {x.shape} and {y.shape}")
    ci = two_level_bootstrap_ci(x - y, resamples, seed, level)
    verdict = "win" if ci["ci_low"] > 0 else "loss" if ci["ci_high"] < 0 else "no difference"
    return {**ci, "verdict": verdict}


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


LENGTH_TOLERANCE = 0.2
"""Length-matched: the answer's token count within ±20% of the reference's (at least ±3)."""


def length_matched(lengths, reference_lengths) -> np.ndarray:
    """1.0 where the answer is about as long as the reference (``LENGTH_TOLERANCE``)."""
    a, y = np.asarray(lengths, dtype=float), np.asarray(reference_lengths, dtype=float)
    return (np.abs(a - y) <= np.maximum(3.0, LENGTH_TOLERANCE * y)).astype(float)


def per_prompt_metrics(rewards, verdicts_vs_reference, verdicts_vs_start, kl,
                       lengths) -> dict[str, np.ndarray]:
    """Per-prompt vectors for one model. RAS is the win rate against the reference
    (``ras``, with ``tie_``/``loss_vs_reference``); NAG the win rate against the
    starting model's answer (``nag``, with ``tie_``/``loss_``/``net_win_vs_start``).
    The length-controlled RAS is ``ras`` weighted by ``length_matched``."""
    metrics = {"mean_reward": np.asarray(rewards, dtype=float)}
    metrics.update(verdict_indicators(verdicts_vs_reference, "vs_reference"))
    metrics["ras"] = metrics.pop("win_vs_reference")
    metrics.update(verdict_indicators(verdicts_vs_start, "vs_start"))
    metrics["nag"] = metrics.pop("win_vs_start")
    metrics["kl_from_start"] = np.asarray(kl, dtype=float)
    metrics["response_length"] = np.asarray(lengths, dtype=float)
    return metrics


@torch.no_grad()
def sequence_kl(model, start_policy, prompts: EncodedPrompts, completion_ids: torch.Tensor,
                completion_mask: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Σ_t KL(π(·|ctx_t) || π_0(·|ctx_t)) along each completion, exact over the vocabulary.

    Exact per-position KL works for greedy answers too, where a sampled estimator
    would be biased. Inputs [N, P] / [N, C]; returns [N].
    """
    out = []
    for s in range(0, completion_ids.shape[0], chunk):
        prompt_mask, mask = prompts.mask[s:s + chunk], completion_mask[s:s + chunk]
        # Only the columns some row of the chunk uses: a forward costs per column, and
        # positions come from the mask, so dropping all-padding columns changes nothing.
        first = int(prompt_mask.any(0).int().argmax())
        width = max(int(mask.sum(1).max()), 1)
        args = (prompts.ids[s:s + chunk, first:], prompt_mask[:, first:],
                completion_ids[s:s + chunk, :width], mask[:, :width])
        lp = F.log_softmax(completion_logits(model, *args).float(), dim=-1)
        lq = F.log_softmax(completion_logits(start_policy, *args).float(), dim=-1)
        # KL is never negative; rounding can make a near-zero one so (-1e-7 for a
        # policy one small step from its start).
        kl_t = (lp.exp() * (lp - lq)).sum(-1).clamp(min=0)
        out.append((kl_t * mask[:, :width]).sum(-1))
    return torch.cat(out)
