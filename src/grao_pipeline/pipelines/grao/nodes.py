"""GRAO from the SFT warm start (../shared/GRAO.md §2)."""

from __future__ import annotations

import datasets
import matplotlib.pyplot as plt
import pandas as pd

from grao_pipeline.alignment.config import GRAOConfig, RewardConfig
from grao_pipeline.alignment.methods import GRAOMethod
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.alignment.rewards import CompositeReward
from grao_pipeline.pipelines.training import fit_policy


def train_grao(sft_model: ModelAndTokenizer, train_set: datasets.Dataset, params: GRAOConfig,
               reward_params: RewardConfig) -> tuple[ModelAndTokenizer, pd.DataFrame, plt.Figure]:
    """Run GRAO; returns the aligned model, the per-step log and the training curves."""
    method = GRAOMethod(sft_model.tokenizer, CompositeReward(reward_params), params)
    title = f"GRAO (β={params.beta}, λ={params.lam}, G={params.num_generations})"
    return fit_policy(sft_model, method, train_set, params, title)
