"""SFT warm start: export the base policy once as a plain HF directory, then train the
registered ``sft`` method on the reference answers (``pipelines/training.py``)."""

from __future__ import annotations

from grao_pipeline.alignment.models import ModelAndTokenizer


def export_base_model(base_model_source: ModelAndTokenizer) -> ModelAndTokenizer:
    """Pass the starting policy through unchanged, so the catalog writes it once as a
    plain HF directory: later stages load it in under a second, any HF tool reads it."""
    return base_model_source
