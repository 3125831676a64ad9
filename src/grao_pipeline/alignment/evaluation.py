"""Answer held-out prompts with fixed decoding, and score the answers: shared by the
evaluation and compare pipelines."""

from __future__ import annotations

import datasets
import pandas as pd
import torch
from tqdm.auto import tqdm

from grao_pipeline.alignment.attention import cpu_attention_in
from grao_pipeline.alignment.config import EvalConfig, RewardConfig
from grao_pipeline.alignment.generation import build_sampler
from grao_pipeline.alignment.metrics import sequence_kl
from grao_pipeline.alignment.models import ModelAndTokenizer, context_length
from grao_pipeline.alignment.rewards import CompositeReward, pairwise_verdicts
from grao_pipeline.alignment.tokens import (
    check_prompt_lengths,
    encode_completions,
    encode_prompts,
    prompt_token_lengths,
)

# What ``answer_prompts`` writes; any other column of its frame is a dataset column
# (e.g. a ground-truth ``answer``), kept so rewards can read it.
ANSWER_COLUMNS = ("prompt", "reference", "completion", "length", "reference_length", "truncated",
                  "kl_from_start")
RESERVED_COLUMNS = (*ANSWER_COLUMNS, "finished", "model", "start_completion", "reward", "reference_reward",
                    "start_reward", "verdict_vs_reference", "verdict_vs_start", "seed")


def answer_prompts(policy: ModelAndTokenizer, test_set: datasets.Dataset, params: EvalConfig,
                   start_policy: ModelAndTokenizer | None = None) -> pd.DataFrame:
    """Answer the first ``num_prompts`` test prompts with fixed decoding settings.

    ``start_policy`` is the model the KL is measured from; None means ``policy`` is
    itself the starting model (KL exactly 0, not computed). Returns one row per prompt,
    with the test set's other columns kept.
    """
    model, tok = policy
    if start_policy is not None and len(start_policy.tokenizer) != len(tok):
        raise ValueError("the evaluated and starting models must share a tokenizer for the KL")
    clash = sorted(set(test_set.column_names) & set(RESERVED_COLUMNS) - {"prompt", "reference"})
    if clash:
        raise ValueError(f"dataset column(s) {clash} clash with evaluation's own columns; "
                         "rename them in data_processing.columns")
    rows = test_set.select(range(min(params.num_prompts, len(test_set)))).to_list()
    prompts = [r["prompt"] for r in rows]
    check_prompt_lengths(tok, prompts, params.max_prompt_tokens, params.max_new_tokens,
                         context_length(model))
    torch.manual_seed(params.seed)
    model.eval()
    # Batches of prompts of similar length (answers are put back in the test set's
    # order): a batch pads its prompts to its longest, and padding costs compute.
    widths = prompt_token_lengths(tok, prompts)  # measured by check_prompt_lengths above
    order = sorted(range(len(prompts)), key=widths.__getitem__)
    batches = []
    # The decode path training's rollouts take (``build_sampler``: the sampling copy and
    # its loop, chosen once), so answers cost what a rollout costs, not ``generate``'s
    # per-step overhead; the policy attends as it does in training while it answers.
    with cpu_attention_in(model, next(model.parameters()).device):
        sampler = build_sampler(model, params.sampling_dtype, params.batch_size, params.decode_kernel)
        for start in tqdm(range(0, len(prompts), params.batch_size), desc="answering", leave=False):
            encoded = encode_prompts(tok, [prompts[i] for i in order[start:start + params.batch_size]])
            batches.append((encoded, sampler.sample(tok, encoded, 1, params.max_new_tokens,
                                                    params.temperature, do_sample=params.do_sample)))
    # The KL outside that block: both models attend alike, so a policy equal to its
    # start scores exactly 0.
    kl = [value for encoded, samples in batches for value in (
        sequence_kl(model, start_policy.model, encoded, samples.ids, samples.mask).tolist()
        if start_policy is not None else [0.0] * len(samples.texts))]
    position = {i: rank for rank, i in enumerate(order)}

    def in_order(values: list) -> list:
        return [values[position[i]] for i in range(len(prompts))]

    kl = in_order(kl)
    completions = in_order([text for _, samples in batches for text in samples.texts])
    lengths = in_order([n for _, samples in batches for n in samples.mask.sum(1).tolist()])
    truncated = in_order([cut for _, samples in batches for cut in samples.truncated.tolist()])
    references = [r["reference"] for r in rows]
    # Counted as the completions are: tokens up to and including EOS, within the limit.
    reference_lengths = encode_completions(tok, references, params.max_new_tokens,
                                           tok.eos_token_id)[1].sum(1).tolist()
    extra = {k: [r[k] for r in rows] for k in test_set.column_names if k not in ("prompt", "reference")}
    return pd.DataFrame({"prompt": prompts, "reference": references, "completion": completions,
                         "length": lengths, "reference_length": reference_lengths,
                         "truncated": truncated, "kl_from_start": kl, **extra})


def data_columns(answers: pd.DataFrame) -> dict[str, list]:
    """The dataset columns ``answer_prompts`` kept, as reward ``**columns``."""
    return {c: answers[c].tolist() for c in answers.columns if c not in ANSWER_COLUMNS}


def check_gold(gold: dict[str, dict], reward_params: RewardConfig) -> None:
    """Refuse a gold scorer that shares a component with the training reward: the
    policy optimised that scorer, so it cannot judge the policy."""
    def options(block: dict) -> dict:
        return {k: v for k, v in block.items() if k != "weight"}

    shared = [name for name, block in gold.items() if block.get("weight", 0) != 0
              and name in reward_params.components and reward_params.components[name]["weight"] != 0
              and options(block) == options(reward_params.components[name])]
    if shared:
        raise ValueError(f"evaluation.gold names {shared}, which the training reward "
                         "(rewards.components) also uses: a scorer the policy was trained on "
                         "cannot be its gold. Point evaluation.gold at a held-out scorer, e.g. a "
                         "reward model trained on other conversations")


def gold_scorer(gold: dict[str, dict], reward_params: RewardConfig) -> CompositeReward | None:
    """The held-out scorer ``gold`` names, refused if the training reward also uses it;
    None when no gold is configured."""
    if not gold:
        return None
    check_gold(gold, reward_params)
    return CompositeReward(RewardConfig(components=gold))


def score_answers(answers: pd.DataFrame, reward_params: RewardConfig, label: str,
                  start_answers: pd.DataFrame | None = None,
                  gold: dict[str, dict] | None = None) -> pd.DataFrame:
    """Reward every completion, the reference and the starting model's completion with
    the same Q (every dataset column passed to it), and judge the completion against
    both. ``start_answers`` None: ``answers`` are the starting model's own. ``gold``
    (``EvalConfig.gold``): also score completions and references with that held-out
    scorer."""
    start = answers if start_answers is None else start_answers
    if list(start["prompt"]) != list(answers["prompt"]):
        raise ValueError(f"{label}: answers and starting-model answers cover different prompts")
    reward = CompositeReward(reward_params)
    prompts, refs = list(answers["prompt"]), list(answers["reference"])
    columns = data_columns(answers)

    def finished(frame: pd.DataFrame | None) -> dict[str, list]:
        return {"finished": [True] * len(prompts) if frame is None else (~frame["truncated"].astype(bool)).tolist()}

    scores = reward.components_and_total(prompts, list(answers["completion"]), refs,
                                         **columns, **finished(answers))
    ref_total = reward(prompts, refs, refs, **columns, **finished(None))
    start_total = (scores["total"] if start_answers is None
                   else reward(prompts, list(start["completion"]), refs, **columns, **finished(start)))
    scored = answers.assign(
        model=label, start_completion=list(start["completion"]), reward=scores["total"],
        reference_reward=ref_total, start_reward=start_total,
        verdict_vs_reference=pairwise_verdicts(scores["total"], ref_total, reward_params.tie_margin).numpy(),
        verdict_vs_start=pairwise_verdicts(scores["total"], start_total, reward_params.tie_margin).numpy(),
        **{f"reward/{k}": v for k, v in scores.items() if k != "total"})
    judge = gold_scorer(gold or {}, reward_params)
    if judge is not None:
        scored["gold_reward"] = judge(prompts, list(answers["completion"]), refs, **columns,
                                      **finished(answers))
        scored["reference_gold_reward"] = judge(prompts, refs, refs, **columns, **finished(None))
    return scored


class HeldOutCurve:
    """A ``train`` callback for the over-optimisation curve (Gao et al. 2022): every
    ``params.curve_every`` steps, greedy answers to the first ``params.curve_prompts``
    held-out ``rows``, scored with the training reward (``heldout/reward``) and the gold
    (``heldout/gold``, where ``params.gold`` names one), with their mean KL from the
    policy as it was when the callback was made (``heldout/kl``), added to that step's
    log row. A reward being won rather than earned shows as the training reward rising
    while the gold, against the KL, does not.

    Training reseeds its RNG every step, so the curve's decoding leaves what training
    samples unchanged (a test holds the trained weights equal with and without it)."""

    def __init__(self, policy: ModelAndTokenizer, rows: list[dict], params: EvalConfig,
                 reward_params: RewardConfig):
        import copy

        self.policy, self.params = policy, params
        self.start = ModelAndTokenizer(copy.deepcopy(policy.model).requires_grad_(False), policy.tokenizer)
        self.rows = datasets.Dataset.from_list(rows[:params.curve_prompts])
        self.reward = CompositeReward(reward_params)
        self.gold = gold_scorer(params.gold, reward_params)

    def __call__(self, step: int, row: dict) -> None:
        if step % self.params.curve_every:
            return
        answers = answer_prompts(self.policy, self.rows, self.params, self.start)
        prompts, completions = list(answers["prompt"]), list(answers["completion"])
        refs = list(answers["reference"])
        columns = {**data_columns(answers), "finished": (~answers["truncated"].astype(bool)).tolist()}
        row["heldout/reward"] = float(torch.tensor(self.reward(prompts, completions, refs, **columns)).mean())
        if self.gold is not None:
            row["heldout/gold"] = float(torch.tensor(self.gold(prompts, completions, refs, **columns)).mean())
        row["heldout/kl"] = float(answers["kl_from_start"].mean())
