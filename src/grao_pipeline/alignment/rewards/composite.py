"""The weighted sum Q = Σ_k w_k·R_k of registered rewards, and the pairwise verdict.

``CompositeReward`` builds each component from its config block (``RewardConfig``) and
reports every component's raw score beside the total, for logging. A component with
weight 0 is not built or called (an environment switches one off that way).
"""

from __future__ import annotations

import torch

from grao_pipeline.alignment.config import RewardConfig
from grao_pipeline.alignment.rewards.registry import checked_scores, resolve_reward


class CompositeReward:
    """Q = Σ_k w_k · R_k, batched. Also exposes each component for logging. A component
    with weight 0 is not built or called (an environment switches one off that way)."""

    def __init__(self, cfg: RewardConfig):
        active = {name: block for name, block in cfg.components.items() if block["weight"] != 0}
        self.weights = {name: float(block["weight"]) for name, block in active.items()}
        self.components = {
            name: resolve_reward(name, {k: v for k, v in block.items() if k != "weight"})
            for name, block in active.items()}

    def components_and_total(self, prompts: list[str], completions: list[str],
                             references: list[str], **columns) -> dict[str, list[float]]:
        """Every component's raw score and the weighted ``total``; lists of len N."""
        if not (len(prompts) == len(completions) == len(references)):
            raise ValueError("prompts, completions and references must have equal lengths")
        scores = {name: checked_scores(fn, prompts, completions, references, columns, name)
                  for name, fn in self.components.items()}
        scores["total"] = [sum(self.weights[n] * scores[n][i] for n in self.weights)
                           for i in range(len(completions))]
        return scores

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        return self.components_and_total(prompts, completions, references, **columns)["total"]


def pairwise_verdicts(scores: torch.Tensor | list[float], baseline_scores: torch.Tensor | list[float],
                      tie_margin: float) -> torch.Tensor:
    """sign(Q(a) − Q(b)) with |Q(a) − Q(b)| <= tie_margin a tie. Returns [N] in {-1, 0, 1}.

    A non-finite score is refused: NaN compares as neither a win nor a loss, and would
    otherwise be counted as a tie."""
    a = torch.as_tensor(scores, dtype=torch.float64)
    b = torch.as_tensor(baseline_scores, dtype=torch.float64)
    for label, values in (("score", a), ("baseline score", b)):
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"pairwise verdict: {label} {bad[0]} is {values[bad[0]].item()} "
                             f"({len(bad)} non-finite of {values.numel()})")
    diff = a - b
    return torch.where(diff.abs() <= tie_margin, torch.zeros_like(diff), torch.sign(diff)).long()
