"""SFT warm start: continue training the base policy on the reference answers."""

from __future__ import annotations

import datasets
import matplotlib.pyplot as plt
import pandas as pd

from grao_pipeline.alignment.config import SFTConfig
from grao_pipeline.alignment.methods import SFTMethod
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.pipelines.training import fit_policy


def export_base_model(base_model_source: ModelAndTokenizer) -> ModelAndTokenizer:
    """Pass the starting policy through unchanged, so the catalog writes it once as a
    plain HF directory: later stages load it in under a second, any HF tool reads it."""
    return base_model_source


def train_sft(base_model: ModelAndTokenizer, train_set: datasets.Dataset,
              params: SFTConfig) -> tuple[ModelAndTokenizer, pd.DataFrame, plt.Figure]:
    """Length-normalised NLL on the reference answers; returns the model, log, curves."""
    return fit_policy(base_model, SFTMethod(base_model.tokenizer, params), train_set, params,
                      "SFT warm start")
