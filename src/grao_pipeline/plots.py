"""Figures the pipelines save (matplotlib, headless): training curves and evaluation."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

# (title, log columns, how): a panel is drawn when the log has all its columns.
_PANELS = [
    ("reward", ["reward/mean", "reward/reference"], "line"),
    ("loss", ["loss"], "line"),
    ("loss-term share (paper Fig. 5)", ["share/exploration", "share/imitation", "share/regulariser"], "stack"),
    ("completion length (tokens)", ["completion_length"], "line"),
    ("seconds per step", ["time/generate", "time/score", "time/update"], "stack"),
    ("grad norm", ["grad_norm"], "line"),
    ("router (MoE): aux loss, largest expert share", ["moe/aux_loss", "moe/max_expert_share"], "line"),
    # evaluation.curve_every: the over-optimisation curve, against KL rather than step
    ("held-out reward against KL from start", ["heldout/reward", "heldout/kl"], "kl"),
]


def training_curves(log: pd.DataFrame, title: str) -> plt.Figure:
    """Reward (± std band), loss, loss-term shares, length, time split, grad norm per step."""
    panels = [p for p in _PANELS if all(c in log for c in p[1])]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (name, cols, how) in zip(axes.flat, panels, strict=False):
        if how == "kl":
            points = log.dropna(subset=["heldout/kl"])
            for c in ("heldout/reward", "heldout/gold"):
                if c in points:
                    ax.plot(points["heldout/kl"], points[c], marker="o", label=c.split("/")[1])
            ax.set_title(name)
            ax.set_xlabel("KL from start (nats per answer)")
            ax.legend(fontsize=7)
            continue
        if how == "stack":
            ax.stackplot(log["step"], *[log[c] for c in cols],
                         labels=[c.split("/")[1] for c in cols], alpha=0.8)
        else:
            for c in cols:
                ax.plot(log["step"], log[c], label=c)
        if name == "reward" and "reward/std" in log:
            ax.fill_between(log["step"], log["reward/mean"] - log["reward/std"],
                            log["reward/mean"] + log["reward/std"], alpha=0.2)
        if name.startswith("loss-term share"):
            ax.set_ylim(0, 1)
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
    judged = [m for m in labels if "ras" in metrics[m]]
    bottom = [0.0] * len(judged)
    for key, colour in (("ras", "tab:green"), ("tie_vs_reference", "tab:gray"),
                        ("loss_vs_reference", "tab:red")):
        share = [metrics[m][key]["value"] for m in judged]
        ax_w.bar(judged, share, bottom=bottom, color=colour, label=key.split("_")[0].replace("ras", "win"),
                 alpha=0.8)
        bottom = [b + s for b, s in zip(bottom, share, strict=True)]
    ax_w.set_ylim(0, 1)
    ax_w.set_title("vs the reference answer (win = RAS)")
    ax_w.legend(fontsize=8)
    fig.tight_layout()
    return fig


def compare_reward_curves(logs: pd.DataFrame) -> plt.Figure:
    """Against generated samples, one line per method (mean over seeds, band spanning
    the seeds): the training reward (with a 1/0 verifiable reward, the accuracy of the
    samples), and the share of groups with no reward variance, which get no
    group-relative gradient (methods that generate nothing, SFT, have no line there);
    then the budget curves of every method."""
    fig, (ax_r, ax_z, ax_v) = plt.subplots(1, 3, figsize=(19, 4.5))
    rollout = logs[logs["reward/mean"].notna()] if "reward/mean" in logs else logs.iloc[0:0]
    for ax, column in ((ax_r, "reward/mean"), (ax_z, "frac_reward_zero_std")):
        for name, df in rollout.groupby("method", sort=False):
            if column not in df or df[column].isna().all():
                continue
            curves = df.pivot_table(index="generated_samples", columns="seed", values=column)
            curves = curves.rolling(3, min_periods=1).mean()
            line, = ax.plot(curves.index, curves.mean(axis=1), label=name)
            ax.fill_between(curves.index, curves.min(axis=1), curves.max(axis=1),
                            color=line.get_color(), alpha=0.15)
        ax.set_xlabel("generated samples")
        ax.legend(fontsize=8, ncol=2)
    ax_r.set_ylabel("training reward (rolling mean of 3 steps)")
    ax_r.set_title("reward vs generated samples (band: range over seeds)")
    ax_z.set_ylabel("share of groups (rolling mean of 3 steps)")
    ax_z.set_title("groups with no reward variance (no gradient)")
    ax_z.set_ylim(0, 1)
    budget_curves(ax_v, logs)
    fig.tight_layout()
    return fig


def budget_curves(ax, logs: pd.DataFrame) -> None:
    """Validation score against optimiser updates, every method (SFT included), mean
    over seeds with the range over seeds: the budget curves (``compare.curve_every``)."""
    if "heldout/reward" not in logs or logs["heldout/reward"].isna().all():
        ax.text(0.5, 0.5, "budget curves off\n(compare.curve_every: 0)", ha="center", va="center")
        ax.set_axis_off()
        return
    for name, df in logs.groupby("method", sort=False):
        df = df.assign(spent=df.groupby("seed")["updates"].cumsum() if "updates" in df
                       else df.groupby("seed").cumcount() + 1)
        points = df[df["heldout/reward"].notna()]
        curves = points.pivot_table(index="spent", columns="seed", values="heldout/reward")
        line, = ax.plot(curves.index, curves.mean(axis=1), marker="o", label=name)
        ax.fill_between(curves.index, curves.min(axis=1), curves.max(axis=1),
                        color=line.get_color(), alpha=0.15)
    ax.set_xlabel("optimiser updates")
    ax.set_ylabel("validation score (greedy)")
    ax.set_title("budget curves (band: range over seeds)")
    ax.legend(fontsize=8, ncol=2)


def compare_grao_shares(logs: pd.DataFrame) -> plt.Figure:
    """GRAO's three loss-term shares per step, averaged over seeds (the paper's Fig. 5)."""
    shares = ["share/exploration", "share/imitation", "share/regulariser"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    grao = logs[logs["method"] == "grao"]
    if grao.empty or shares[0] not in grao:
        ax.text(0.5, 0.5, "GRAO not in this comparison", ha="center", va="center")
    else:
        mean = grao.groupby("step")[shares].mean()
        ax.stackplot(mean.index, *[mean[c] for c in shares],
                     labels=[c.split("/")[1] for c in shares], alpha=0.8)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_title("GRAO loss-term shares (mean over seeds)")
    fig.tight_layout()
    return fig


def _figure_of(ax_or_axes) -> plt.Figure:
    ax = ax_or_axes.flat[0] if hasattr(ax_or_axes, "flat") else ax_or_axes
    return ax.figure


def study_figures(study, params: list[str]) -> tuple[plt.Figure, ...]:
    """Optuna's own matplotlib plots: optimisation history, parameter importances,
    contour over the first two parameters, intermediate values. A plot the study cannot
    support yet (e.g. importances from one trial) is a figure that says why."""
    import warnings

    import optuna.visualization.matplotlib as ovm

    makers = [("optimisation history", lambda: ovm.plot_optimization_history(study)),
              ("parameter importances", lambda: ovm.plot_param_importances(study)),
              ("contour", lambda: ovm.plot_contour(study, params=params[:2])),
              ("intermediate values", lambda: ovm.plot_intermediate_values(study))]
    figures = []
    for title, make in makers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = _figure_of(make())
            fig.set_size_inches(7, 4.5)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            ax.text(0.5, 0.5, f"{title}: not available yet\n({err})", ha="center", va="center",
                    wrap=True)
            ax.set_axis_off()
        fig.tight_layout()
        figures.append(fig)
    return tuple(figures)


def sensitivity_heatmap(cells: pd.DataFrame, params, seed_std: float, cell_std: float) -> plt.Figure:
    """Validation score per (β, λ) cell, annotated; the title sets the seed noise of the
    centre cell beside the spread across cells."""
    fig, ax = plt.subplots(figsize=(1.3 * len(cells.columns) + 3, 1.0 * len(cells.index) + 2))
    image = ax.imshow(cells.to_numpy(), cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(cells.columns)), [f"{v:g}" for v in cells.columns])
    ax.set_yticks(range(len(cells.index)), [f"{v:g}" for v in cells.index])
    ax.set_xlabel("λ (alignment regulariser)")
    ax.set_ylabel("β (imitation)")
    for i, beta in enumerate(cells.index):
        for j, lam in enumerate(cells.columns):
            ax.text(j, i, f"{cells.loc[beta, lam]:.3f}", ha="center", va="center", color="white",
                    fontsize=8)
    centre = (list(cells.columns).index(params.centre["lam"]), list(cells.index).index(params.centre["beta"]))
    ax.add_patch(plt.Rectangle((centre[0] - 0.5, centre[1] - 0.5), 1, 1, fill=False, ec="red", lw=2))
    fig.colorbar(image, ax=ax, label=f"validation {params.objective}")
    ax.set_title(f"GRAO sensitivity (red: paper's β, λ)\nseed std at centre {seed_std:.3f} vs "
                 f"std across cells {cell_std:.3f}", fontsize=10)
    fig.tight_layout()
    return fig
