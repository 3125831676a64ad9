"""Answer held-out prompts with fixed decoding, and score the answers: shared by the
evaluation and compare pipelines."""

from __future__ import annotations

import datasets
import pandas as pd
import torch
from tqdm.auto import tqdm

from grao_pipeline.alignment.config import EvalConfig, RewardConfig
from grao_pipeline.alignment.metrics import sequence_kl
from grao_pipeline.alignment.models import ModelAndTokenizer, context_length
from grao_pipeline.alignment.rewards import CompositeReward, pairwise_verdicts
from grao_pipeline.alignment.rollout import check_prompt_lengths, encode_prompts, sample_completions


def answer_prompts(policy: ModelAndTokenizer, test_set: datasets.Dataset, params: EvalConfig,
                   start_policy: ModelAndTokenizer | None = None) -> pd.DataFrame:
    """Answer the first ``num_prompts`` test prompts with fixed decoding settings.

    ``start_policy`` is the model the KL is measured from; None means ``policy`` is
    itself the starting model (KL 0). Returns one row per prompt.
    """
    model, tok = policy
    if start_policy is not None and len(start_policy.tokenizer) != len(tok):
        raise ValueError("the evaluated and starting models must share a tokenizer for the KL")
    rows = test_set.select(range(min(params.num_prompts, len(test_set)))).to_list()
    prompts = [r["prompt"] for r in rows]
    check_prompt_lengths(tok, prompts, params.max_prompt_tokens, params.max_new_tokens,
                         context_length(model))
    torch.manual_seed(params.seed)
    model.eval()
    answers, lengths, truncated, kl = [], [], [], []
    for start in tqdm(range(0, len(prompts), params.batch_size), desc="answering", leave=False):
        encoded = encode_prompts(tok, prompts[start:start + params.batch_size])
        samples = sample_completions(model, tok, encoded, 1, params.max_new_tokens,
                                     params.temperature, do_sample=params.do_sample)
        answers += samples.texts
        lengths += samples.mask.sum(1).tolist()
        truncated += samples.truncated.tolist()
        kl += (sequence_kl(model, start_policy.model, encoded, samples.ids, samples.mask).tolist()
               if start_policy is not None else [0.0] * len(samples.texts))
    return pd.DataFrame({"prompt": prompts, "reference": [r["reference"] for r in rows],
                         "answer": answers, "length": lengths, "truncated": truncated,
                         "kl_from_start": kl})


def score_answers(answers: pd.DataFrame, reward_params: RewardConfig, label: str,
                  start_answers: pd.DataFrame | None = None) -> pd.DataFrame:
    """Reward every answer, the reference and the starting model's answer with the same
    Q, and judge the answer against both. ``start_answers`` None: ``answers`` are the
    starting model's own."""
    start = answers if start_answers is None else start_answers
    if list(start["prompt"]) != list(answers["prompt"]):
        raise ValueError(f"{label}: answers and starting-model answers cover different prompts")
    reward = CompositeReward(reward_params)
    prompts, refs = list(answers["prompt"]), list(answers["reference"])
    scores = reward.components_and_total(prompts, list(answers["answer"]), refs)
    ref_total = reward(prompts, refs, refs)
    start_total = scores["total"] if start_answers is None else reward(prompts, list(start["answer"]), refs)
    scored = answers.assign(
        model=label, start_answer=list(start["answer"]), reward=scores["total"],
        reference_reward=ref_total, start_reward=start_total,
        verdict_vs_reference=pairwise_verdicts(scores["total"], ref_total, reward_params.tie_margin).numpy(),
        verdict_vs_start=pairwise_verdicts(scores["total"], start_total, reward_params.tie_margin).numpy(),
        **{f"reward/{k}": v for k, v in scores.items() if k != "total"})
    return scored
