"""What every training node does around the core loop: check the prompts fit, train,
and turn the log into a table and a figure for the catalog."""

from __future__ import annotations

import datasets
import matplotlib.pyplot as plt
import pandas as pd

from grao_pipeline.alignment.config import TrainConfig
from grao_pipeline.alignment.models import ModelAndTokenizer, context_length
from grao_pipeline.alignment.rollout import check_prompt_lengths
from grao_pipeline.alignment.trainer import Method, train
from grao_pipeline.plots import training_curves


def fit_policy(policy: ModelAndTokenizer, method: Method, train_set: datasets.Dataset,
               params: TrainConfig, title: str) -> tuple[ModelAndTokenizer, pd.DataFrame, plt.Figure]:
    """Train ``policy`` with ``method``; return it, the per-step log and its curves."""
    model, tokenizer = policy
    rows = train_set.to_list()
    check_prompt_lengths(tokenizer, [r["prompt"] for r in rows], params.max_prompt_tokens,
                         params.max_completion_tokens, context_length(model))
    result = train(model, method, rows, params)
    log = pd.DataFrame(result.log)
    return ModelAndTokenizer(result.model, tokenizer), log, training_curves(log, title)
