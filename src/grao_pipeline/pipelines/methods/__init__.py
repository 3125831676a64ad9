"""Baselines and GRAO ablations: one pipeline each (see pipeline.py)."""

from .pipeline import create_pipelines

__all__ = ["create_pipelines"]
