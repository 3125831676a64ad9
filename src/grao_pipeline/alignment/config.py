"""The shared config blocks, and the one type check every config runs.

Each method's own config sits beside its code (``methods/<name>.py``), the comparison's
beside ``compare.py`` and the studies' beside ``tuning.py``; here are only the blocks
they share: data, reward, LoRA, training, rollout and evaluation. Kedro (>=1.3) turns a
typed ``params:`` input into these dataclasses with keyword arguments, so an unknown key
fails at start-up; ``check_types`` refuses a value of the wrong type (a Literal outside
its choices included) and ``__post_init__`` a value out of range, each naming the field,
before any model is loaded.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A parameter value that cannot work; the message names the field."""


def require(ok: bool, cls: object, name: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{type(cls).__name__}.{name} = {getattr(cls, name)!r}: {why}")


@dataclass(frozen=True)
class Range:
    """A bound on a numeric field, declared beside it and checked by ``check_types``:
    ``steps: Annotated[int, Range(ge=1)] = 20`` refuses 0 with "must be >= 1"."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        return ("<= " if high[-1] == "]" else "< ") + high[:-1]


def _range(hint: Any) -> Range | None:
    """The ``Range`` of an ``Annotated`` hint, also inside ``X | None``."""
    if get_origin(hint) is Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, Range)), None)
    if get_origin(hint) in (Union, types.UnionType):
        return next(filter(None, map(_range, get_args(hint))), None)
    return None


def _matches(value: Any, hint: Any) -> bool:
    """Strict: a bool is not an int, 2.5 is not an int, "false" is not a bool; an int
    is a float."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        return _matches(value, args[0])
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


def _shown(hint: Any) -> str:
    """A type hint as a user reads it: ``int``, ``float | None`` (no ``Annotated``)."""
    if get_origin(hint) is Annotated:
        return _shown(get_args(hint)[0])
    if get_origin(hint) in (Union, types.UnionType):
        return " | ".join(map(_shown, get_args(hint)))
    if hint is type(None):
        return "None"
    if get_origin(hint) in (list, dict):  # list[int], not a bare "list" that the value is
        return f"{get_origin(hint).__name__}[{', '.join(map(_shown, get_args(hint)))}]"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def nested(cfg: object, name: str, cls: type) -> None:
    """A nested config section given as a mapping (YAML) becomes its dataclass."""
    value = getattr(cfg, name)
    if isinstance(value, Mapping):
        try:
            setattr(cfg, name, cls(**value))
        except TypeError as err:
            raise ConfigError(f"{type(cfg).__name__}.{name}: {err}") from err


def check_types(cfg: object) -> None:
    """Refuse any field whose value is not of its declared type or outside its declared
    ``Range``, naming field and value, before anything else looks at them."""
    hints = get_type_hints(type(cfg), include_extras=True)
    for f in fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        if _matches(value, hint):
            bound = _range(hint)
            if bound is not None and value is not None and not bound.holds(value):
                raise ConfigError(f"{type(cfg).__name__}.{f.name} = {value!r}: must be {bound}")
            continue
        if get_origin(hint) is Literal:
            choices = get_args(hint)
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            raise ConfigError(f"{type(cfg).__name__}.{f.name} = {value!r}: must be one of "
                              f"{', '.join(map(repr, choices))}"
                              + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{type(cfg).__name__}.{f.name} = {value!r}: must be {_shown(hint)}, "
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
    min_chars: Annotated[int, Range(ge=1)] = 2
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
        bad = [k for k, v in self.columns.items() if not (isinstance(k, str) and isinstance(v, str))]
        require(not bad, self, "columns", f"keys and values must be column names, not {bad}")
        require("finished" not in self.columns, self, "columns",
                "'finished' is reserved: the harness passes it to rewards (the answer ended with EOS)")
        require(self.max_prompt_chars > self.min_chars, self, "max_prompt_chars",
                "must exceed min_chars")
        require(self.max_answer_chars > self.min_chars, self, "max_answer_chars",
                "must exceed min_chars")
        for name in ("validation_fraction", "test_fraction"):
            require(0.0 < getattr(self, name) < 0.5, self, name, "must be in (0, 0.5)")


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
    tie_margin: Annotated[float, Range(ge=0)] = 0.05
    """|Q(a) - Q(b)| <= tie_margin is judged a tie by the pairwise judge."""

    def __post_init__(self) -> None:
        check_types(self)
        require(isinstance(self.components, dict) and bool(self.components), self,
                "components", "needs at least one reward")
        for name, block in self.components.items():
            if not isinstance(block, dict) or "weight" not in block:
                raise ConfigError(f"RewardConfig.components.{name} = {block!r}: must be a "
                                  "mapping with a numeric 'weight' (and that reward's options)")
            weight = block["weight"]
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight != weight:
                raise ConfigError(f"RewardConfig.components.{name}.weight = {weight!r}: "
                                  "must be a number")
        require(any(b["weight"] != 0 for b in self.components.values()), self, "components",
                "every weight is 0, so every reward is 0 and nothing would be learnt")


@dataclass
class LoRAConfig:
    """Low-rank adapters through ``peft`` (off by default). With them on, only the
    adapters train, and the frozen start policy (KL, DPO) is the same model with its
    adapters disabled, not a second copy."""

    enabled: bool = False
    """Train LoRA adapters instead of every weight."""
    rank: Annotated[int, Range(ge=1)] = 8
    """r: the adapters' rank."""
    alpha: Annotated[int, Range(gt=0)] = 16
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
        require(self.dropout == 0.0, self, "dropout",
                "must be 0: training runs in eval mode, where dropout does nothing")
        require(bool(self.target_modules), self, "target_modules", "must name at least one module")


@dataclass
class TrainConfig:
    """What every method shares: optimiser, budget, precision, checkpoints."""

    batch_field: ClassVar[str] = ""
    """The field that counts a step's rows (``batch_size``, ``prompts_per_step``):
    ``grad_accum_chunks`` must divide it, since a chunk holds whole prompts."""

    steps: Annotated[int, Range(ge=1)] = 20
    """Optimiser steps (one per batch; for GRAO one per rollout batch)."""
    learning_rate: Annotated[float, Range(gt=0)] = 1e-5
    """AdamW learning rate (paper: 1e-6 at batch 64 on 7B models)."""
    weight_decay: Annotated[float, Range(ge=0)] = 0.01
    """AdamW weight decay (paper: 0.01)."""
    warmup_steps: Annotated[int, Range(ge=0)] = 0
    """Linear warm-up steps, then constant."""
    max_grad_norm: Annotated[float, Range(gt=0)] = 1.0
    """Gradient-norm clipping threshold."""
    grad_accum_chunks: Annotated[int, Range(ge=1)] = 1
    """Split each batch into this many chunks of whole prompts and accumulate; the
    update is the same as without chunking, memory is lower."""
    max_prompt_tokens: Annotated[int, Range(ge=1)] = 96
    """Longest tokenised prompt (chat template included); longer ones are refused."""
    max_completion_tokens: Annotated[int, Range(ge=1)] = 48
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
    checkpoint_every: Annotated[int, Range(ge=0)] = 0
    """Steps between checkpoints; 0 disables them."""
    checkpoints_to_keep: Annotated[int, Range(ge=1)] = 2
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
    router_aux_loss_coef: Annotated[float, Range(ge=0)] | None = None
    """Mixture-of-experts policies only: weight of the router's load-balancing loss
    added to the method's loss; None takes the model config's ``router_aux_loss_coef``."""

    def __post_init__(self) -> None:
        nested(self, "lora", LoRAConfig)
        check_types(self)
        require(self.checkpoint_every == 0 or self.checkpoint_dir is not None, self,
                "checkpoint_dir", "is required when checkpoint_every > 0")
        if self.batch_field:
            require(getattr(self, self.batch_field) % self.grad_accum_chunks == 0, self,
                    "grad_accum_chunks", f"must divide {self.batch_field} (a chunk holds whole prompts)")


@dataclass
class RolloutConfig(TrainConfig):
    """What every on-policy method shares: the same rollout for GRAO, GRPO and PPO."""

    batch_field: ClassVar[str] = "prompts_per_step"

    prompts_per_step: Annotated[int, Range(ge=1)] = 4
    """Prompts per rollout batch (one optimiser step each)."""
    num_generations: int = 4
    """G: completions sampled per prompt (paper: 8)."""
    temperature: Annotated[float, Range(gt=0)] = 0.7
    """Sampling temperature (paper: 0.7); no top-k/top-p truncation."""
    sampling_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """dtype of the sampling copy of the policy; ``auto`` = bfloat16 where the hardware
    has native bf16 (about 2x faster generation on AVX512-BF16 CPUs). On CPU the bf16
    copy's linear layers are pre-packed (``generation/packing.py``)."""
    decode_kernel: Literal["auto", "fused", "off"] = "auto"
    """How the bf16 sampling copy decodes on a CPU: ``fused`` runs each decode step as
    one call to the fused kernel (``generation/kernels``; AVX512-BF16 CPUs, Llama models;
    ~2× faster generation, docs/performance.md) and fails where it cannot; ``off``
    keeps oneDNN-packed linears and the Python decode loop (tokens bit-identical to
    ``generate``); ``auto`` = ``fused`` where it runs, else ``off``, with the reason logged."""
    kl_coef: Annotated[float, Range(ge=0)] = 0.0
    """Weight of the per-token KL penalty to the frozen start policy (GRPO's k3 estimator
    in the loss; PPO's log-ratio in the reward). 0 switches it off and saves the frozen
    copy of the model; a comparison is fair only when every method pays the same."""
    epochs_per_rollout: Annotated[int, Range(ge=1)] = 1
    """Optimiser steps per rollout (TRL's ``num_iterations``). 1 is on-policy; > 1 reuses
    the rollout through a clipped importance ratio against the rollout-time policy."""
    adv_eps: Annotated[float, Range(gt=0)] = 1e-4
    """eps in Â = (r − mean) / (std + eps): keeps a near-constant group's advantages finite."""
    no_signal_steps: Annotated[int, Range(ge=0)] = 3
    """Warn once when every group's rewards were all equal for this many steps in a row:
    the group-relative advantages are then 0 and nothing is learnt (a constant reward, a
    judge that always ties). 0 = never check."""
    stop_without_signal: bool = False
    """With ``no_signal_steps``: end the run with an error instead of a warning."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.num_generations >= 2, self, "num_generations",
                "G must be >= 2: a group of one has no relative advantage")


@dataclass
class EvalConfig:
    """Held-out evaluation: fixed decoding, rewards, bootstrap intervals."""

    num_prompts: Annotated[int, Range(ge=2)] = 64
    """Test prompts evaluated (the first N of the test split)."""
    max_new_tokens: Annotated[int, Range(ge=1)] = 48
    """Tokens generated per answer."""
    max_prompt_tokens: Annotated[int, Range(ge=1)] = 96
    """Longest tokenised prompt; longer ones are refused."""
    do_sample: bool = False
    """False = greedy decoding (the default: deterministic, comparable across models)."""
    temperature: Annotated[float, Range(gt=0)] = 1.0
    """Sampling temperature when ``do_sample``."""
    batch_size: Annotated[int, Range(ge=1)] = 32
    """Prompts generated per batch (one decode)."""
    sampling_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """dtype answers are decoded in, as training's rollouts (``RolloutConfig.sampling_dtype``):
    ``auto`` = a packed bf16 sampling copy where bf16 is native (the answers then come
    from the bf16 copy, not the float32 weights), else the model itself. ``float32``
    answers exactly as ``generate`` would on the saved weights."""
    decode_kernel: Literal["auto", "fused", "off"] = "auto"
    """The bf16 copy's decode loop, as training's (``RolloutConfig.decode_kernel``):
    ``fused`` (AVX512-BF16 CPUs, Llama models), ``off`` (tokens identical to
    ``generate`` on the copy), ``auto`` = ``fused`` where it runs."""
    bootstrap_resamples: Annotated[int, Range(ge=100)] = 1000
    """Bootstrap resamples for the 95% intervals."""
    seed: int = 0
    """Seed for sampling and the bootstrap."""
    curve_every: Annotated[int, Range(ge=0)] = 0
    """During training (the method pipelines), every ``curve_every`` optimiser steps:
    greedy answers to ``curve_prompts`` validation prompts, scored with the training
    reward and the gold, with their KL from the start policy, in the training log and
    curves (the over-optimisation curve). Each point costs about as much as one
    training step on a CPU. 0: off."""
    curve_prompts: Annotated[int, Range(ge=1)] = 16
    """Validation prompts answered for each point of the curve."""
    gold: dict[str, dict] = field(default_factory=dict)
    """A held-out scorer, as ``rewards.components`` blocks (e.g. ``{reward_model: {weight:
    1.0, model: data/06_models/reward_gold}}``): every answer and reference is also scored
    with it (``gold_reward``, and ``gold_minus_training`` per answer). A component the
    policy trained on cannot be gold, and is refused. A component with weight 0 is off
    (an environment switches the default gold off that way). Empty, or all off: only the
    training reward is reported, and it is what the policy optimised."""

    def __post_init__(self) -> None:
        check_types(self)
        self.gold = {name: block for name, block in self.gold.items()
                     if not (isinstance(block, dict) and block.get("weight") == 0)}
        if self.gold:
            RewardConfig(components=self.gold)  # the same checks as the training reward's
