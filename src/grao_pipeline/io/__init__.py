"""Kedro datasets for models and raw data."""

from .datasets import ChitchatDataset, GGUFModelDataset, HFLoadDataset, HFModelDataset

__all__ = ["ChitchatDataset", "GGUFModelDataset", "HFLoadDataset", "HFModelDataset"]
