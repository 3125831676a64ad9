"""The tuning and sensitivity pipelines."""

from .pipeline import create_pipelines

__all__ = ["create_pipelines"]
