"""Figures the pipelines save (matplotlib, headless): training curves and evaluation."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def training_curves(log: pd.DataFrame, title: str) -> plt.Figure:
    """Reward, loss, loss-term shares (the paper's Fig. 5), length and time split per step."""
    panels = [("reward", ["reward/mean", "reward/reference"]), ("loss", ["loss"]),
              ("loss-term share", None), ("completion length (tokens)", ["completion_length"]),
              ("seconds per step", ["time/generate", "time/score", "time/update"]),
              ("grad norm", ["grad_norm"])]
    panels = [(t, cols) for t, cols in panels
              if cols is None and "share/exploration" in log or cols and cols[0] in log]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, cols) in zip(axes[0], panels):
        if cols is None:
            shares = [c for c in ("share/exploration", "share/imitation", "share/regulariser")]
            ax.stackplot(log["step"], *[log[c] for c in shares],
                         labels=[c.split("/")[1] for c in shares], alpha=0.8)
            ax.set_ylim(0, 1)
        elif name == "seconds per step":
            ax.stackplot(log["step"], *[log[c] for c in cols],
                         labels=[c.split("/")[1] for c in cols], alpha=0.8)
        else:
            for c in cols:
                ax.plot(log["step"], log[c], label=c)
            if "reward/std" in log and name == "reward":
                ax.fill_between(log["step"], log["reward/mean"] - log["reward/std"],
                                log["reward/mean"] + log["reward/std"], alpha=0.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def evaluation_summary(metrics: dict[str, dict[str, dict[str, float]]]) -> plt.Figure:
    """Mean reward with 95% CIs, and win/tie/loss against the reference, per model."""
    labels = list(metrics)
    fig, (ax_r, ax_w) = plt.subplots(1, 2, figsize=(11, 3.8))
    vals = [metrics[m]["mean_reward"] for m in labels]
    ax_r.bar(labels, [v["value"] for v in vals], color="tab:blue", alpha=0.8,
             yerr=[[v["value"] - v["ci_low"] for v in vals], [v["ci_high"] - v["value"] for v in vals]],
             capsize=5)
    ax_r.set_title("held-out mean reward (95% bootstrap CI)")
    judged = [m for m in labels if "win_vs_reference" in metrics[m]]
    bottom = [0.0] * len(judged)
    for key, colour in (("win", "tab:green"), ("tie", "tab:gray"), ("loss", "tab:red")):
        share = [metrics[m][f"{key}_vs_reference"]["value"] for m in judged]
        ax_w.bar(judged, share, bottom=bottom, color=colour, label=key, alpha=0.8)
        bottom = [b + s for b, s in zip(bottom, share)]
    ax_w.set_ylim(0, 1)
    ax_w.set_title("vs the reference answer (win = RAS)")
    ax_w.legend(fontsize=8)
    fig.tight_layout()
    return fig
