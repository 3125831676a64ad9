"""The reward_model pipeline, and the default run's proxy and gold reward models."""

from .pipeline import ROLES, create_pipeline, create_role_pipelines

__all__ = ["ROLES", "create_pipeline", "create_role_pipelines"]
