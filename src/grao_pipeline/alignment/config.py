"""Typed, validated configs: one dataclass per concern, every field documented.

Kedro (>=1.3) turns a typed ``params:`` input into these dataclasses with keyword
arguments, so an unknown key fails at start-up, and ``__post_init__`` refuses bad
values with a message naming the field, before any model is loaded.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A parameter value that cannot work; the message names the field."""


def _require(ok: bool, cls: object, name: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{type(cls).__name__}.{name} = {getattr(cls, name)!r}: {why}")


def _matches(value: Any, hint: Any) -> bool:
    """Strict: a bool is not an int, 2.5 is not an int, "false" is not a bool; an int
    is a float."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if isinstance(hint, type) and is_dataclass(hint):
        return isinstance(value, hint)
    return True


def _nested(cfg: object, name: str, cls: type) -> None:
    """A nested config section given as a mapping (YAML) becomes its dataclass."""
    value = getattr(cfg, name)
    if isinstance(value, Mapping):
        try:
            setattr(cfg, name, cls(**value))
        except TypeError as err:
            raise ConfigError(f"{type(cfg).__name__}.{name}: {err}") from err


def check_types(cfg: object) -> None:
    """Refuse any field whose value is not of its declared type, naming field and
    value, before anything else looks at them."""
    hints = get_type_hints(type(cfg))
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if not _matches(value, hints[f.name]):
            shown = getattr(hints[f.name], "__name__", None) or str(hints[f.name]).replace("typing.", "")
            raise ConfigError(f"{type(cfg).__name__}.{f.name} = {value!r}: must be {shown}, "
                              f"not {type(value).__name__}")


@dataclass
class DataConfig:
    """How raw rows become ``(prompt, reference[, rejected])`` rows and splits."""

    format: Literal["chitchat", "hh_rlhf", "columns"] = "chitchat"
    """Raw layout: chitchat conversations, HH-RLHF ``chosen``/``rejected`` transcripts,
    or plain columns named by ``columns``."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping, our name -> the raw dataset's column. ``prompt``, ``reference``,
    ``rejected``, ``chosen`` and ``turns`` name the columns each format reads (missing
    keys mean the same name); any other key is an extra column to keep under that name,
    e.g. ``answer: final_answer``: rewards and evaluation receive it as a keyword."""
    min_chars: int = 2
    """Shortest prompt or answer kept, in characters after whitespace cleaning."""
    max_prompt_chars: int = 200
    """Longest prompt kept, in characters; keeps rollouts cheap on CPU."""
    max_answer_chars: int = 200
    """Longest reference (and rejected) answer kept, in characters."""
    validation_fraction: float = 0.05
    """Share of rows in the validation split."""
    test_fraction: float = 0.05
    """Share of rows in the test split."""
    seed: int = 0
    """Salt of the hash that assigns rows to splits (stable under row order)."""

    def __post_init__(self) -> None:
        check_types(self)
        _require(self.format in ("chitchat", "hh_rlhf", "columns"), self, "format",
                 "must be 'chitchat', 'hh_rlhf' or 'columns'")
        bad = [k for k, v in self.columns.items() if not (isinstance(k, str) and isinstance(v, str))]
        _require(not bad, self, "columns", f"keys and values must be column names, not {bad}")
        _require("finished" not in self.columns, self, "columns",
                 "'finished' is reserved: the harness passes it to rewards (the answer ended with EOS)")
        _require(self.min_chars >= 1, self, "min_chars", "must be >= 1")
        _require(self.max_prompt_chars > self.min_chars, self, "max_prompt_chars",
                 "must exceed min_chars")
        _require(self.max_answer_chars > self.min_chars, self, "max_answer_chars",
                 "must exceed min_chars")
        for name in ("validation_fraction", "test_fraction"):
            _require(0.0 < getattr(self, name) < 0.5, self, name, "must be in (0, 0.5)")


@dataclass
class RewardConfig:
    """The quality score Q(prompt, answer) = Σ_k w_k·R_k and the pairwise judge built on it."""

    components: dict[str, dict] = field(default_factory=lambda: {
        "relevance": {"weight": 1.0}, "positivity": {"weight": 0.5}, "profanity": {"weight": 1.0}})
    """Reward name -> its block: ``weight`` (a number) plus that reward's own options,
    e.g. ``relevance: {weight: 1.0, embedding_model: <dir or hub id>, batch_size: 64}``.
    Built-ins: ``relevance``, ``positivity``, ``profanity``, ``reference_similarity`` (off
    by default, see rewards.py); any name registered with ``register_reward``; or
    ``"package.module:function"`` for a plain Python function (this runs code named in
    config: only use modules you trust)."""
    tie_margin: float = 0.05
    """|Q(a) - Q(b)| <= tie_margin is judged a tie by the pairwise judge."""

    def __post_init__(self) -> None:
        check_types(self)
        _require(isinstance(self.components, dict) and bool(self.components), self,
                 "components", "needs at least one reward")
        for name, block in self.components.items():
            if not isinstance(block, dict) or "weight" not in block:
                raise ConfigError(f"RewardConfig.components.{name} = {block!r}: must be a "
                                  "mapping with a numeric 'weight' (and that reward's options)")
            weight = block["weight"]
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight != weight:
                raise ConfigError(f"RewardConfig.components.{name}.weight = {weight!r}: "
                                  "must be a number")
        _require(any(b["weight"] != 0 for b in self.components.values()), self, "components",
                 "every weight is 0, so every reward is 0 and nothing would be learnt")
        _require(self.tie_margin >= 0, self, "tie_margin", "must be >= 0")


@dataclass
class LoRAConfig:
    """Low-rank adapters through ``peft`` (off by default). With them on, only the
    adapters train, and the frozen start policy (KL, DPO) is the same model with its
    adapters disabled, not a second copy."""

    enabled: bool = False
    """Train LoRA adapters instead of every weight."""
    rank: int = 8
    """r: the adapters' rank."""
    alpha: int = 16
    """Scaling numerator: the adapter output is multiplied by alpha / rank."""
    dropout: float = 0.0
    """LoRA dropout. Must be 0: the trainer keeps the model in eval mode so that the
    sampled and the trained policy are the same, which would leave dropout inert."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that get adapters (Llama/Qwen/Mistral attention projections by
    default; add gate_proj, up_proj, down_proj for the MLP)."""
    save_merged: bool = False
    """Save the model with the adapters merged into its weights (a plain HF model
    directory) instead of the adapter directory."""

    def __post_init__(self) -> None:
        check_types(self)
        _require(self.rank >= 1, self, "rank", "must be >= 1")
        _require(self.alpha > 0, self, "alpha", "must be > 0")
        _require(self.dropout == 0.0, self, "dropout",
                 "must be 0: training runs in eval mode, where dropout does nothing")
        _require(bool(self.target_modules), self, "target_modules", "must name at least one module")


@dataclass
class TrainConfig:
    """What every method shares: optimiser, budget, precision, checkpoints."""

    steps: int = 20
    """Optimiser steps (one per batch; for GRAO one per rollout batch)."""
    learning_rate: float = 1e-5
    """AdamW learning rate (paper: 1e-6 at batch 64 on 7B models)."""
    weight_decay: float = 0.01
    """AdamW weight decay (paper: 0.01)."""
    warmup_steps: int = 0
    """Linear warm-up steps, then constant."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping threshold."""
    grad_accum_chunks: int = 1
    """Split each batch into this many chunks of whole prompts and accumulate; the
    update is the same as without chunking, memory is lower."""
    max_prompt_tokens: int = 96
    """Longest tokenised prompt (chat template included); longer ones are refused."""
    max_completion_tokens: int = 48
    """Longest completion: new tokens sampled, and the cut for reference answers."""
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"
    """bf16 autocast for every forward of a step (scoring and the update), or plain fp32;
    ``auto`` = bf16 where the hardware has native bf16. (Not accelerate's ``"no"``: YAML
    1.1 reads an unquoted no as False, and ``dvc exp run -S`` writes it unquoted.)"""
    seed: int = 0
    """Seeds data order and sampling; step k reseeds with (seed, k) so a resumed run
    repeats the uninterrupted one."""
    checkpoint_dir: str | None = None
    """Where periodic checkpoints go; None disables them."""
    checkpoint_every: int = 0
    """Steps between checkpoints; 0 disables them."""
    checkpoints_to_keep: int = 2
    """Newest checkpoints kept on disk."""
    resume: bool = True
    """Resume from the newest complete checkpoint in ``checkpoint_dir`` if there is one."""
    show_progress: bool = True
    """Show a tqdm progress bar."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters (``lora: {enabled: true, rank: 16}``); off by default."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more
    update time."""
    router_aux_loss_coef: float | None = None
    """Mixture-of-experts policies only: weight of the router's load-balancing loss
    added to the method's loss; None takes the model config's ``router_aux_loss_coef``."""

    def __post_init__(self) -> None:
        _nested(self, "lora", LoRAConfig)
        check_types(self)
        _require(self.steps >= 1, self, "steps", "must be >= 1")
        _require(self.router_aux_loss_coef is None or self.router_aux_loss_coef >= 0, self,
                 "router_aux_loss_coef", "must be >= 0 or null")
        _require(self.learning_rate > 0, self, "learning_rate", "must be > 0")
        _require(self.weight_decay >= 0, self, "weight_decay", "must be >= 0")
        _require(self.warmup_steps >= 0, self, "warmup_steps", "must be >= 0")
        _require(self.max_grad_norm > 0, self, "max_grad_norm", "must be > 0")
        _require(self.grad_accum_chunks >= 1, self, "grad_accum_chunks", "must be >= 1")
        _require(self.max_prompt_tokens >= 1, self, "max_prompt_tokens", "must be >= 1")
        _require(self.max_completion_tokens >= 1, self, "max_completion_tokens", "must be >= 1")
        _require(self.mixed_precision in ("auto", "bf16", "fp32"), self, "mixed_precision",
                 "must be 'auto', 'bf16' or 'fp32'")
        _require(self.checkpoint_every >= 0, self, "checkpoint_every", "must be >= 0")
        _require(self.checkpoints_to_keep >= 1, self, "checkpoints_to_keep", "must be >= 1")
        _require(self.checkpoint_every == 0 or self.checkpoint_dir is not None, self,
                 "checkpoint_dir", "is required when checkpoint_every > 0")


@dataclass
class SFTConfig(TrainConfig):
    """SFT: length-normalised NLL of the reference answers."""

    batch_size: int = 8
    """Rows per optimiser step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.batch_size >= 1, self, "batch_size", "must be >= 1")
        _require(self.batch_size % self.grad_accum_chunks == 0, self, "grad_accum_chunks",
                 "must divide batch_size")


@dataclass
class RolloutConfig(TrainConfig):
    """What every on-policy method shares: the same rollout for GRAO, GRPO and PPO."""

    prompts_per_step: int = 4
    """Prompts per rollout batch (one optimiser step each)."""
    num_generations: int = 4
    """G: completions sampled per prompt (paper: 8)."""
    temperature: float = 0.7
    """Sampling temperature (paper: 0.7); no top-k/top-p truncation."""
    sampling_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """dtype of the sampling copy of the policy; ``auto`` = bfloat16 where the hardware
    has native bf16 (about 2x faster generation on AVX512-BF16 CPUs). On CPU the bf16
    copy's linear layers are pre-packed for oneDNN (``alignment/sampler.py``)."""
    decode_kernel: Literal["auto", "fused", "off"] = "auto"
    """How the bf16 sampling copy decodes on a CPU: ``fused`` runs each decode step as
    one call to the fused kernel (``alignment/kernels``; AVX512-BF16 CPUs, Llama models;
    ~2× faster generation, benchmarks/NOTES.md) and fails where it cannot; ``off``
    keeps oneDNN-packed linears and the Python decode loop (tokens bit-identical to
    ``generate``); ``auto`` = ``fused`` where it runs, else ``off``, with the reason logged."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.prompts_per_step >= 1, self, "prompts_per_step", "must be >= 1")
        _require(self.num_generations >= 2, self, "num_generations",
                 "G must be >= 2: a group of one has no relative advantage")
        _require(self.temperature > 0, self, "temperature", "must be > 0 (sampling)")
        _require(self.sampling_dtype in ("auto", "bfloat16", "float32"), self,
                 "sampling_dtype", "must be 'auto', 'bfloat16' or 'float32'")
        _require(self.decode_kernel in ("auto", "fused", "off"), self,
                 "decode_kernel", "must be 'auto', 'fused' or 'off'")
        _require(self.prompts_per_step % self.grad_accum_chunks == 0, self,
                 "grad_accum_chunks", "must divide prompts_per_step (groups are never split)")


@dataclass
class GRAOConfig(RolloutConfig):
    """GRAO (../shared/GRAO.md §2): rollout, group advantages, three-term loss."""

    beta: float = 0.5
    """β: weight of the imitation term Â_y·ℓ(y) (paper: 0.5)."""
    lam: float = 0.6
    """λ: weight of the alignment regulariser Â_i·(ℓ(o_i) − ℓ(y)) (paper: 0.6)."""
    exploration: bool = True
    """Keep the exploration term Â_i·ℓ(o_i); False is the "no exploration" ablation."""
    include_reference_in_group: bool = True
    """Compute the group mean/std over {o_1..o_G, y} (default) or over the samples only."""
    adv_eps: float = 1e-4
    """eps in Â = (r − mean) / (std + eps), std the population std."""
    kl_coef: float = 0.0
    """Optional k3 KL penalty to a frozen copy of the starting policy; 0 = off (paper)."""
    epochs_per_rollout: int = 1
    """Optimiser steps per rollout; > 1 switches the sample terms to a clipped
    importance ratio against the rollout-time policy. 1 = on-policy (paper)."""
    clip_eps: float = 0.2
    """Ratio clip range used when ``epochs_per_rollout`` > 1."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.beta >= 0, self, "beta", "must be >= 0")
        _require(self.lam >= 0, self, "lam", "must be >= 0")
        _require(self.adv_eps > 0, self, "adv_eps", "must be > 0")
        _require(self.kl_coef >= 0, self, "kl_coef", "must be >= 0")
        _require(self.epochs_per_rollout >= 1, self, "epochs_per_rollout", "must be >= 1")
        _require(0 < self.clip_eps < 1, self, "clip_eps", "must be in (0, 1)")


@dataclass
class GRPOConfig(RolloutConfig):
    """GRPO: group advantages over the samples only, clipped ratio, k3 KL to the reference."""

    kl_coef: float = 0.04
    """β of the per-token k3 KL to the frozen starting policy (0 disables the reference)."""
    clip_eps_low: float = 0.2
    """Ratio clip 1 − eps_low."""
    clip_eps_high: float = 0.2
    """Ratio clip 1 + eps_high (DAPO raises this, e.g. 0.28)."""
    aggregation: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    """Per-token loss -> scalar: see ``losses.grpo_loss``."""
    std_correction: int = 1
    """Group std convention: 1 = sample std (TRL's), 0 = population std (GRAO's)."""
    scale_rewards: bool = True
    """Divide by (std + adv_eps); False = Dr. GRPO's unscaled advantages."""
    adv_eps: float = 1e-4
    """eps in (r − mean) / (std + eps), as in TRL."""
    epochs_per_rollout: int = 1
    """Optimiser steps per rollout (TRL's num_iterations)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.kl_coef >= 0, self, "kl_coef", "must be >= 0")
        _require(0 < self.clip_eps_low < 1, self, "clip_eps_low", "must be in (0, 1)")
        _require(self.clip_eps_high > 0, self, "clip_eps_high", "must be > 0")
        _require(self.aggregation in ("grpo", "bnpo", "dr_grpo", "dapo"), self, "aggregation",
                 "must be 'grpo', 'bnpo', 'dr_grpo' or 'dapo'")
        _require(self.std_correction in (0, 1), self, "std_correction", "must be 0 or 1")
        _require(self.adv_eps > 0, self, "adv_eps", "must be > 0")
        _require(self.epochs_per_rollout >= 1, self, "epochs_per_rollout", "must be >= 1")


@dataclass
class GRPOSFTConfig(GRPOConfig):
    """GRPO plus a fixed μ times the SFT loss on the reference y (``methods/grpo_sft.py``)."""

    sft_coef: float = 0.1
    """μ: weight of the length-normalised NLL of y added to the GRPO loss (0 = GRPO)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.sft_coef >= 0, self, "sft_coef", "must be >= 0")


@dataclass
class LUFFYConfig(GRPOConfig):
    """LUFFY (arXiv 2504.14945, ``methods/luffy.py``): y joins the group as an off-policy
    member with a shaped, unclipped ratio; no KL by default."""

    kl_coef: float = 0.0
    """LUFFY drops the KL term; kept as an option."""
    aggregation: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    """Token-mean over the step's tokens, y's included (LUFFY's); only ``dapo`` is allowed."""
    off_policy: bool = True
    """y in the group and in the loss; false gives GRPO with token-mean aggregation."""
    shaping_gamma: float = 0.1
    """γ of the shaping f(π) = π / (π + γ) on y's tokens."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.aggregation == "dapo", self, "aggregation",
                 "must be 'dapo': y's tokens share the step's token normaliser")
        _require(self.shaping_gamma > 0, self, "shaping_gamma", "must be > 0")


@dataclass
class PPOConfig(RolloutConfig):
    """PPO: value head on the policy trunk, GAE, clipped ratio, KL penalty in the reward."""

    kl_coef: float = 0.05
    """Per-token KL penalty −kl_coef·(log π − log π_ref) added to the reward."""
    gamma: float = 1.0
    """Discount over completion tokens."""
    gae_lambda: float = 0.95
    """GAE λ."""
    clip_eps: float = 0.2
    """Policy ratio clip."""
    value_clip: float = 0.2
    """Value prediction clip around the rollout-time values."""
    value_coef: float = 0.1
    """Weight of the value loss."""
    epochs_per_rollout: int = 2
    """Optimiser steps per rollout (PPO reuses each rollout)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.kl_coef >= 0, self, "kl_coef", "must be >= 0")
        _require(0 < self.gamma <= 1, self, "gamma", "must be in (0, 1]")
        _require(0 <= self.gae_lambda <= 1, self, "gae_lambda", "must be in [0, 1]")
        _require(0 < self.clip_eps < 1, self, "clip_eps", "must be in (0, 1)")
        _require(self.value_clip > 0, self, "value_clip", "must be > 0")
        _require(self.value_coef >= 0, self, "value_coef", "must be >= 0")
        _require(self.epochs_per_rollout >= 1, self, "epochs_per_rollout", "must be >= 1")


@dataclass
class DPOConfig(TrainConfig):
    """DPO: sigmoid loss on (chosen, rejected) pairs against the frozen starting policy."""

    beta: float = 0.1
    """β of the DPO sigmoid loss (TRL's default)."""
    batch_size: int = 4
    """Preference pairs per optimiser step."""
    pair_source: Literal["auto", "dataset", "synthetic"] = "auto"
    """``dataset`` uses the data's rejected answers (HH-RLHF); ``synthetic`` samples
    ``candidates_per_prompt`` answers from the starting policy and pairs the best against
    the worst by reward; ``auto`` = dataset where a ``rejected`` column exists."""
    candidates_per_prompt: int = 4
    """K answers sampled per prompt for synthetic pairs."""
    synthetic_prompts: int = 32
    """Prompts used to build synthetic pairs (budget: K·this generated samples)."""
    temperature: float = 0.7
    """Sampling temperature for synthetic candidates."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.beta > 0, self, "beta", "must be > 0")
        _require(self.batch_size >= 1, self, "batch_size", "must be >= 1")
        _require(self.batch_size % self.grad_accum_chunks == 0, self, "grad_accum_chunks",
                 "must divide batch_size")
        _require(self.pair_source in ("auto", "dataset", "synthetic"), self, "pair_source",
                 "must be 'auto', 'dataset' or 'synthetic'")
        _require(self.candidates_per_prompt >= 2, self, "candidates_per_prompt", "must be >= 2")
        _require(self.synthetic_prompts >= 1, self, "synthetic_prompts", "must be >= 1")
        _require(self.temperature > 0, self, "temperature", "must be > 0")


@dataclass
class RewardModelConfig:
    """A reward model trained on preference pairs with TRL's ``RewardTrainer``."""

    epochs: float = 2.0
    """Passes over the training pairs."""
    learning_rate: float = 5e-5
    """AdamW learning rate."""
    batch_size: int = 8
    """Pairs per optimiser step."""
    max_length: int = 256
    """Longest tokenised (prompt, answer) sequence; longer ones are truncated."""
    eval_fraction: float = 0.2
    """Share of the pairs held out for the pair-accuracy estimate."""
    bootstrap_resamples: int = 1000
    """Resamples for the held-out accuracy interval."""
    seed: int = 0
    """Seeds the split, the head's initialisation and the data order."""

    def __post_init__(self) -> None:
        check_types(self)
        _require(self.epochs > 0, self, "epochs", "must be > 0")
        _require(self.learning_rate > 0, self, "learning_rate", "must be > 0")
        _require(self.batch_size >= 1, self, "batch_size", "must be >= 1")
        _require(self.max_length >= 8, self, "max_length", "must be >= 8")
        _require(0.0 < self.eval_fraction < 1.0, self, "eval_fraction", "must be in (0, 1)")
        _require(self.bootstrap_resamples >= 100, self, "bootstrap_resamples", "must be >= 100")


@dataclass
class EvalConfig:
    """Held-out evaluation: fixed decoding, rewards, bootstrap intervals."""

    num_prompts: int = 64
    """Test prompts evaluated (the first N of the test split)."""
    max_new_tokens: int = 48
    """Tokens generated per answer."""
    max_prompt_tokens: int = 96
    """Longest tokenised prompt; longer ones are refused."""
    do_sample: bool = False
    """False = greedy decoding (the default: deterministic, comparable across models)."""
    temperature: float = 1.0
    """Sampling temperature when ``do_sample``."""
    batch_size: int = 32
    """Prompts generated per batch."""
    bootstrap_resamples: int = 1000
    """Bootstrap resamples for the 95% intervals."""
    seed: int = 0
    """Seed for sampling and the bootstrap."""

    def __post_init__(self) -> None:
        check_types(self)
        _require(self.num_prompts >= 2, self, "num_prompts", "must be >= 2")
        _require(self.max_new_tokens >= 1, self, "max_new_tokens", "must be >= 1")
        _require(self.max_prompt_tokens >= 1, self, "max_prompt_tokens", "must be >= 1")
        _require(self.temperature > 0, self, "temperature", "must be > 0")
        _require(self.batch_size >= 1, self, "batch_size", "must be >= 1")
        _require(self.bootstrap_resamples >= 100, self, "bootstrap_resamples", "must be >= 100")


def _default_compared() -> list[str]:
    from grao_pipeline.alignment.methods import registered_methods

    return [m for m in registered_methods() if m != "sft"]


@dataclass
class CompareConfig:
    """Which methods the compare pipeline runs, over which seeds. ``methods`` and
    ``seeds`` shape the pipeline itself (one namespaced run per pair): set them in a
    config environment (conf/local, --env); ``--params`` can only pick a named set
    (``compare.methods=<set>``), since Kedro's command line takes no lists."""

    methods: list[str] | str = field(default_factory=_default_compared)
    """Registered methods to train from the same starting policy, each reading its own
    parameters section; or the name of one of ``method_sets``."""
    method_sets: dict[str, list[str]] = field(default_factory=dict)
    """Named lists of methods that ``methods`` may name."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Training seeds; every method runs once per seed."""
    reach_fraction: float = 0.9
    """"Steps to reach" = first step where the smoothed training reward has made this
    fraction of its total gain (final − first)."""
    smoothing_window: int = 3
    """Rolling-mean window (steps) for the training reward curve."""
    bootstrap_resamples: int = 1000
    """Resamples of the two-level (seed, then prompt) bootstrap."""
    table_metrics: list[str] = field(default_factory=list)
    """The columns of the Markdown table, in order (empty: every metric); the CSV table
    always has them all."""
    start_model: str = "sft_model"
    """The catalog model every run starts from and is compared against: ``sft_model``
    (the SFT warm start) or ``base_model`` (the untrained starting policy, e.g. for the
    verifiable task, where SFT on noisy demonstrations would differ between noise levels)."""

    def __post_init__(self) -> None:
        check_types(self)
        from grao_pipeline.alignment.methods import registered_methods

        if isinstance(self.methods, str):
            _require(self.methods in self.method_sets, self, "methods",
                     f"names no set of method_sets {sorted(self.method_sets)}")
            self.methods = list(self.method_sets[self.methods])
        unknown = [m for m in self.methods if m not in registered_methods()]
        _require(not unknown and bool(self.methods), self, "methods",
                 f"must be a non-empty list of registered methods {registered_methods()}")
        _require(len(set(self.methods)) == len(self.methods), self, "methods", "has duplicates")
        _require(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), self, "seeds",
                 "must be non-empty and distinct")
        _require(0 < self.reach_fraction <= 1, self, "reach_fraction", "must be in (0, 1]")
        _require(self.smoothing_window >= 1, self, "smoothing_window", "must be >= 1")
        _require(self.bootstrap_resamples >= 100, self, "bootstrap_resamples", "must be >= 100")
        _require(self.start_model in ("sft_model", "base_model"), self, "start_model",
                 "must be sft_model or base_model")


@dataclass
class StudyConfig:
    """What every Optuna study here shares: the method, the objective, the storage and
    the budget of one trial (see alignment/tuning.py)."""

    method: str = "grao"
    """Registered method each trial trains from the SFT warm start."""
    objective: Literal["mean_reward", "ras"] = "mean_reward"
    """Validation score maximised: mean reward, or RAS (win rate against y)."""
    study_name: str = "grao-beta-lambda"
    """Name of the study in the storage; reusing it resumes the study."""
    storage: str = "sqlite:///data/09_tuning/optuna.db"
    """``sqlite:///<path>`` (one process), ``journal:<path>`` (several processes on one
    machine: JournalFileBackend), any SQLAlchemy URL such as
    ``postgresql+psycopg://user@host/db`` (several machines), or ``env:<VAR>`` to read
    the URL from an environment variable (keeps passwords out of conf/base)."""
    steps: int = 8
    """Optimiser steps per trial (the trial's budget)."""
    eval_prompts: int = 24
    """Validation prompts scored per evaluation (never the test split)."""
    heartbeat_interval: int = 10
    """Seconds between a running trial's heartbeats (RDB storages only)."""
    grace_period: int = 30
    """A running trial with no heartbeat for this long is failed and retried."""
    max_retry: int = 2
    """Retries of a trial whose worker died."""

    def __post_init__(self) -> None:
        check_types(self)
        _require(self.objective in ("mean_reward", "ras"), self, "objective",
                 "must be 'mean_reward' or 'ras'")
        _require(bool(self.study_name), self, "study_name", "must be non-empty")
        _require(self.storage.startswith(("sqlite:///", "journal:", "env:")) or "://" in self.storage,
                 self, "storage", "must be sqlite:///<path>, journal:<path>, env:<VAR> or a "
                 "SQLAlchemy URL")
        _require(self.steps >= 1, self, "steps", "must be >= 1")
        _require(self.eval_prompts >= 2, self, "eval_prompts", "must be >= 2")
        _require(self.heartbeat_interval >= 1, self, "heartbeat_interval", "must be >= 1")
        _require(self.grace_period > self.heartbeat_interval, self, "grace_period",
                 "must exceed heartbeat_interval")
        _require(self.max_retry >= 0, self, "max_retry", "must be >= 0")


@dataclass
class TuningConfig(StudyConfig):
    """``kedro run --pipelines tuning``: a resumable, prunable study of β and λ."""

    search_space: dict[str, dict] = field(default_factory=lambda: {
        "beta": {"low": 0.0, "high": 2.0, "log": False},
        "lam": {"low": 0.0, "high": 1.5, "log": False}})
    """Config field -> ``{low, high, log}`` (float; ``int: true`` for integers such as
    ``num_generations``) or ``{choices: [...]}``. Any field of the method's config:
    ``learning_rate``, ``num_generations``, ``temperature``..."""
    sampler: Literal["tpe", "random"] = "tpe"
    """TPE (Optuna's default, seeded) or random search."""
    sampler_seed: int = 0
    """Seed of the sampler, so a study is reproducible."""
    pruner: Literal["median", "hyperband", "none"] = "median"
    """Stops trials whose intermediate validation score is poor."""
    pruner_startup_trials: int = 3
    """MedianPruner: trials completed before any pruning."""
    pruner_warmup_steps: int = 0
    """MedianPruner: steps of a trial before it can be pruned."""
    eval_every: int = 4
    """Report an intermediate validation score to the pruner every k steps."""
    n_trials: int = 12
    """Finished trials (complete or pruned) the study stops at, over all workers."""
    timeout: float | None = None
    """Seconds this worker may run before it stops starting trials; None = no limit."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, space in self.search_space.items():
            ok = isinstance(space, dict) and (
                ("choices" in space and bool(space["choices"])) or
                ({"low", "high"} <= set(space) and space["low"] < space["high"]))
            if not ok:
                raise ConfigError(f"TuningConfig.search_space.{name} = {space!r}: needs "
                                  "{low, high (> low), log} or {choices: [...]}")
            if space.get("log") and space.get("low", 1) <= 0:
                raise ConfigError(f"TuningConfig.search_space.{name}: a log range needs low > 0")
        _require(bool(self.search_space), self, "search_space", "needs at least one parameter")
        _require(self.sampler in ("tpe", "random"), self, "sampler", "must be 'tpe' or 'random'")
        _require(self.pruner in ("median", "hyperband", "none"), self, "pruner",
                 "must be 'median', 'hyperband' or 'none'")
        _require(self.pruner_startup_trials >= 0, self, "pruner_startup_trials", "must be >= 0")
        _require(self.pruner_warmup_steps >= 0, self, "pruner_warmup_steps", "must be >= 0")
        _require(self.eval_every >= 1, self, "eval_every", "must be >= 1")
        _require(self.n_trials >= 1, self, "n_trials", "must be >= 1")
        _require(self.timeout is None or self.timeout > 0, self, "timeout", "must be > 0 or null")


@dataclass
class SensitivityConfig(StudyConfig):
    """``kedro run --pipelines sensitivity``: a grid over β × λ, the centre cell
    repeated over seeds so the map shows its own noise."""

    study_name: str = "grao-sensitivity"
    """Name of the grid study in the storage; reusing it resumes the grid."""
    betas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0])
    """β values of the grid (0 = the no-imitation ablation)."""
    lams: list[float] = field(default_factory=lambda: [0.0, 0.3, 0.6, 1.2])
    """λ values of the grid (0 = the no-regulariser ablation)."""
    centre: dict[str, float] = field(default_factory=lambda: {"beta": 0.5, "lam": 0.6})
    """The cell repeated over seeds (the paper's values)."""
    centre_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds of the centre cell; every other cell runs the first seed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(len(self.betas) >= 1 and len(self.lams) >= 1, self, "betas",
                 "betas and lams need a value each at least")
        _require(self.centre.get("beta") in self.betas and self.centre.get("lam") in self.lams,
                 self, "centre", "must be a cell of the grid")
        _require(len(set(self.centre_seeds)) >= 2, self, "centre_seeds",
                 "needs at least 2 distinct seeds to measure seed noise")
