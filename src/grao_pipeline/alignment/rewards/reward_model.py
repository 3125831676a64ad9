"""A trained reward model as a reward: any Hugging Face ``AutoModelForSequenceClassification``
with one output, scoring (prompt, answer) pointwise.

The pair is formatted with the reward model's own chat template (user: prompt,
assistant: answer) where it has one, as TRL's ``RewardTrainer`` trains it; otherwise
as "prompt\\n\\nanswer". Batched, on the accelerator's device, safetensors only
(``models.check_model_dir`` refuses a pickle-only folder).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch

from grao_pipeline.alignment.config import Range, check_types
from grao_pipeline.alignment.rewards.registry import RewardFn, register_reward


@dataclass
class RewardModelConfig:
    """A reward model trained on preference pairs with TRL's ``RewardTrainer``."""

    pair_source: Literal["dpo", "conversations"] = "dpo"
    """Where the pairs come from. ``dpo``: DPO's pairs (the data's rejected answers, else
    synthetic pairs ranked by the configured reward, which the model then learns back).
    ``conversations``: the human conversations alone; chosen is the human reply y, and
    each prompt gives one rejected answer of each kind: a human reply to another question
    (drawn at random), the question echoed whole, and its first half echoed."""
    conversation_prompts: Annotated[int, Range(ge=2)] = 2000
    """``conversations``: training prompts drawn (seeded) to make pairs, three per prompt;
    training time grows with it."""
    epochs: Annotated[float, Range(gt=0)] = 2.0
    """Passes over the training pairs."""
    learning_rate: Annotated[float, Range(gt=0)] = 5e-5
    """AdamW learning rate."""
    batch_size: Annotated[int, Range(ge=1)] = 8
    """Pairs per optimiser step."""
    max_length: Annotated[int, Range(ge=8)] = 256
    """Longest tokenised (prompt, answer) sequence; longer ones are truncated."""
    eval_fraction: Annotated[float, Range(gt=0.0, lt=1.0)] = 0.2
    """Share of the pairs held out for the pair-accuracy estimate."""
    bootstrap_resamples: Annotated[int, Range(ge=100)] = 1000
    """Resamples for the held-out accuracy interval."""
    seed: int = 0
    """Seeds the split, the head's initialisation and the data order."""

    def __post_init__(self) -> None:
        check_types(self)


def format_pair(tokenizer, prompt: str, answer: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            tokenize=False)
    return f"{prompt}\n\n{answer}"


@torch.no_grad()
def classifier_scores(model, tokenizer, prompts: list[str], answers: list[str], max_length: int,
                  batch_size: int) -> list[float]:
    """The classifier's scalar output for each (prompt, answer), in batches."""
    device = next(model.parameters()).device
    texts = [format_pair(tokenizer, p, a) for p, a in zip(prompts, answers, strict=True)]
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        scores += model(**batch).logits[:, 0].float().cpu().tolist()
    return scores


class RewardModelScorer:
    def __init__(self, model: str, batch_size: int = 16, max_length: int = 512):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from grao_pipeline.alignment.models import check_if_local

        check_if_local(model)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model, trust_remote_code=False, use_safetensors=True).to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward model {model}: {self.model.config.num_labels} outputs; "
                             "a reward model has exactly one (num_labels=1)")
        if self.tokenizer.pad_token is None:
            raise ValueError(f"reward model {model}: its tokenizer has no pad_token")
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        self.max_length = max_length

    def __call__(self, prompts: list[str], completions: list[str], references: list[str],
                 **columns) -> list[float]:
        return classifier_scores(self.model, self.tokenizer, prompts, completions, self.max_length,
                             self.batch_size)


@functools.lru_cache(maxsize=2)
def _scorer(model: str, batch_size: int, max_length: int) -> RewardModelScorer:
    return RewardModelScorer(model, batch_size, max_length)


@register_reward("reward_model", factory=True)
def reward_model_reward(model: str | None = None, batch_size: int = 16, max_length: int = 512) -> RewardFn:
    """Options: ``model`` (a local HF directory or hub id), ``batch_size``, ``max_length``."""
    if not model:
        raise ValueError("reward_model needs 'model': a sequence-classification model directory or hub id")
    scorer = _scorer(model, batch_size, max_length)

    def reward_model(prompts, completions, references, **columns):
        return scorer(prompts, completions, references, **columns)

    return reward_model


def reward_model_from_policy(policy, seed: int = 0):
    """A sequence classifier with one output on the policy's backbone: the policy's
    weights (bar the LM head) and a freshly initialised scalar head."""
    from transformers import AutoModelForSequenceClassification

    config = policy.model.config.__class__.from_dict({
        **policy.model.config.to_dict(), "num_labels": 1, "id2label": {0: "reward"}, "label2id": {"reward": 0}})
    config.pad_token_id = policy.tokenizer.pad_token_id
    torch.manual_seed(seed)
    classifier = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    backbone = {k: v for k, v in policy.model.state_dict().items() if not k.startswith("lm_head.")}
    missing, unexpected = classifier.load_state_dict(backbone, strict=False)
    if unexpected or any(not k.startswith("score.") for k in missing):
        raise ValueError(f"policy and reward-model layouts differ: missing {missing}, unexpected {unexpected}")
    return classifier


def train_reward_model(policy, pairs: list[dict], cfg: RewardModelConfig, output_dir: str | Path):
    """TRL's ``RewardTrainer`` (Bradley–Terry) on conversational ``prompt``/``chosen``/
    ``rejected`` pairs, from the policy's backbone. Returns the trained classifier."""
    import datasets
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    data = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": p["prompt"]}],
         "chosen": [{"role": "assistant", "content": p["chosen"]}],
         "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])
    args = TRLRewardConfig(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed,
        report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(), bf16=False)
    trainer = RewardTrainer(model=reward_model_from_policy(policy, cfg.seed), args=args,
                            train_dataset=data, processing_class=policy.tokenizer)
    trainer.train()
    return trainer.model.eval()


def pair_accuracy(model, tokenizer, pairs: list[dict], max_length: int = 512,
                  batch_size: int = 16) -> list[float]:
    """1.0 where the model scores chosen above rejected, per pair."""
    prompts = [p["prompt"] for p in pairs]
    chosen = classifier_scores(model, tokenizer, prompts, [p["chosen"] for p in pairs], max_length, batch_size)
    rejected = classifier_scores(model, tokenizer, prompts, [p["rejected"] for p in pairs], max_length, batch_size)
    return [float(c > r) for c, r in zip(chosen, rejected, strict=True)]
