"""Run any registered method: ``train_method`` resolves each phase's config from its
parameters section, builds the method, makes its rows (DPO's pairs), checks the
prompts fit, and runs the shared loop (``trainer.train``). Framework-free: the Kedro
nodes, ``compare`` and ``tuning`` all call it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from grao_pipeline.alignment.config import ConfigError, RewardConfig, RolloutConfig, TrainConfig
from grao_pipeline.alignment.lora import finished, with_adapters
from grao_pipeline.alignment.methods import MethodSpec, get_method, parameter_sections, phase_specs
from grao_pipeline.alignment.models import ModelAndTokenizer, context_length, weights_digest
from grao_pipeline.alignment.rewards import RewardFn
from grao_pipeline.alignment.tokens import check_prompt_lengths
from grao_pipeline.alignment.trainer import train

log = logging.getLogger(__name__)


def method_configs(name: str, sections: Mapping[str, Any], changes: Mapping[str, Any] | None = None,
                   budget: int | None = None) -> list[tuple[MethodSpec, TrainConfig]]:
    """Each phase of ``name`` with its validated config.

    ``sections``: parameters section -> dict or config. ``changes`` are replaced in every
    phase (``compare`` sets the seed and switches checkpoints off). ``budget`` (generated
    samples) is applied by methods that fit their config to one. A recipe's phases
    checkpoint into folders of their own, never into their stand-alone method's.
    """
    specs = phase_specs(name)
    missing = [s for s in parameter_sections(name) if s not in sections]
    if missing:
        raise KeyError(f"method {name!r} needs parameters section(s) {missing}")
    recipe = get_method(name)
    own = recipe.config(sections[recipe.section]) if recipe.phases and recipe.config_cls else None
    phase_steps = own.phase_steps if own else None
    if phase_steps is not None and len(phase_steps) != len(specs):
        raise ConfigError(f"{recipe.section}.phase_steps = {phase_steps}: recipe {name!r} has "
                          f"{len(specs)} phases ({', '.join(s.name for s in specs)}), one step "
                          "count each")
    out = []
    for i, spec in enumerate(specs):
        cfg = spec.config(sections[spec.section])
        if phase_steps is not None:
            cfg = dataclasses.replace(cfg, steps=phase_steps[i])
        if own is not None and own.learning_rate is not None:
            cfg = dataclasses.replace(cfg, learning_rate=own.learning_rate)
        if len(specs) > 1 and cfg.checkpoint_dir is not None:
            cfg = dataclasses.replace(
                cfg, checkpoint_dir=str(Path(cfg.checkpoint_dir).parent / f"{name}.{spec.name}"))
        if changes:
            cfg = dataclasses.replace(cfg, **changes)
        if budget is not None and spec.fit_budget is not None:
            cfg = spec.fit_budget(cfg, budget)
        out.append((spec, cfg))
    return out


def reward_context(reward_cfg: RewardConfig) -> dict[str, Any]:
    """What a run's reward depends on beyond its settings: the settings, plus the SHA-256
    of the weights in every local model folder a component names. A reward model
    retrained in place keeps its path, so without the weights a checkpoint trained
    against the old one would be resumed (and a comparison run kept) as if nothing
    had changed."""
    weights = {f"{name}.{option}": weights_digest(Path(value))
               for name, block in sorted(reward_cfg.components.items()) if block["weight"] != 0
               for option, value in sorted(block.items())
               if isinstance(value, str) and Path(value).is_dir() and any(Path(value).glob("*.safetensors"))}
    return {"rewards": dataclasses.asdict(reward_cfg), **({"reward_weights": weights} if weights else {})}


class NoSignalError(RuntimeError):
    """Every group's rewards were equal for ``no_signal_steps`` steps in a row."""


def reward_label(reward: RewardFn) -> str:
    weights = getattr(reward, "weights", None)  # CompositeReward
    if weights:
        return " + ".join(f"{w:g}·{name}" for name, w in weights.items())
    return getattr(reward, "__name__", type(reward).__name__)


class SignalWatch:
    """A ``train`` callback: flags a reward that cannot teach, i.e. every group of
    ``steps`` consecutive steps had zero reward variance (``frac_reward_zero_std`` = 1)."""

    def __init__(self, method: str, reward: RewardFn, steps: int, stop: bool):
        self.method, self.label, self.steps, self.stop = method, reward_label(reward), steps, stop
        self.run = 0
        self.warned = False

    def __call__(self, step: int, row: dict) -> None:
        share = row.get("frac_reward_zero_std")
        if share is None or self.steps == 0 or self.warned:
            return
        self.run = self.run + 1 if share >= 1.0 else 0
        if self.run < self.steps:
            return
        message = (f"{self.method}: reward {self.label} gave every group equal rewards for "
                   f"{self.run} steps in a row (zero-variance share {share:.2f}, steps "
                   f"{step - self.run + 1}-{step}), so every advantage is 0 and nothing is "
                   "learnt. Check the reward (constant? a judge that always ties?), or raise "
                   "temperature or num_generations")
        if self.stop:
            raise NoSignalError(message + " (stop_without_signal: true)")
        log.warning(message)
        self.warned = True


def train_method(name: str, policy: ModelAndTokenizer, rows: list[dict],
                 sections: Mapping[str, Any], reward: RewardFn | None = None,
                 changes: Mapping[str, Any] | None = None, budget: int | None = None,
                 callbacks: Sequence[Callable[[int, dict], None]] = (),
                 context: Mapping[str, Any] | None = None
                 ) -> tuple[ModelAndTokenizer, list[dict], str]:
    """Train ``policy`` in place with the registered method ``name``.

    With ``lora.enabled`` the policy gets adapters first and comes back as a
    ``PeftModel`` (or merged, with ``lora.save_merged``). Returns the policy, the step log (one row per optimiser step over all phases, with
    ``phase`` and a running ``step``; ``samples`` counts every generated sample, DPO's
    pair candidates included) and a title for figures. ``context`` (e.g. the reward
    config) must match for a checkpoint to be resumed.
    """
    model, tokenizer = policy
    if not rows:
        raise ValueError(f"{name}: no training rows")
    history: list[dict] = []
    titles = []
    phases = method_configs(name, sections, changes, budget)
    for spec, cfg in phases:
        if spec.uses_reward and reward is None:
            raise ValueError(f"method {spec.name!r} needs a reward")
        model = with_adapters(model, cfg.lora, cfg.seed, spec.name)
        method = spec.build(tokenizer, reward, cfg, model)
        phase_rows, report = method.training_rows(model, rows)
        if report:
            log.info("%s: %s", spec.name, report)
        check_prompt_lengths(tokenizer, sorted({r["prompt"] for r in phase_rows}),
                             cfg.max_prompt_tokens, cfg.max_completion_tokens, context_length(model))
        watch = ([SignalWatch(spec.name, reward, cfg.no_signal_steps, cfg.stop_without_signal)]
                 if isinstance(cfg, RolloutConfig) and reward is not None else [])
        result = train(model, method, phase_rows, cfg, [*callbacks, *watch], context)
        model = result.model
        # The saved config.json records every training phase that made the model, its
        # own after those of the model it started from.
        model.config.grao_pipeline_runs = [*getattr(model.config, "grao_pipeline_runs", []),
                                           {**result.made_of, "method": spec.name}]
        offset = len(history)
        phase_log = [{**row, "phase": spec.name, "step": row["step"] + offset} for row in result.log]
        if phase_log and report.get("samples"):
            phase_log[0]["samples"] = phase_log[0].get("samples", 0) + report["samples"]
        history += phase_log
        titles.append(spec.describe(cfg) + (f" + LoRA r={cfg.lora.rank}" if cfg.lora.enabled else ""))
    return ModelAndTokenizer(finished(model, phases[-1][1].lora), tokenizer), history, " → ".join(titles)
