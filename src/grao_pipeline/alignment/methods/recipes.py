"""Sequential recipes: registered methods run one after another, each phase starting
from the policy the previous one left, each with its own parameters section. A recipe's
own section (``RecipeConfig``) splits the optimiser steps between its phases, so that
the recipe as a whole spends the same number of updates as any single method."""

from __future__ import annotations

from dataclasses import dataclass

from grao_pipeline.alignment.config import ConfigError, check_types
from grao_pipeline.alignment.methods.registry import MethodSpec, register_method


@dataclass
class RecipeConfig:
    """A recipe's own settings."""

    phase_steps: list[int] | None = None
    """Optimiser steps of each phase, in order; they replace each phase's own ``steps``.
    None keeps every phase's own, so the recipe spends their sum. ``compare`` gives every
    method the same number of updates, so there the phases must add up to GRAO's steps
    (for example [10, 10]: SFT, then GRPO, within GRAO's 20)."""
    learning_rate: float | None = None
    """One learning rate for every phase, replacing each phase's own; None keeps them.
    The recipe's phases read other methods' sections (``sft_continued``, ``grpo``), so a
    learning rate tuned for the recipe lives here, not there, where it would change
    those methods too."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.phase_steps is not None and (not self.phase_steps or min(self.phase_steps) < 1):
            raise ConfigError(f"RecipeConfig.phase_steps = {self.phase_steps!r}: one step count "
                              "of at least 1 per phase, or null to keep each phase's own steps")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ConfigError(f"RecipeConfig.learning_rate = {self.learning_rate!r}: must be > 0, "
                              "or null to keep each phase's own")


# "SFT then RL": more SFT on y from the warm start, then GRPO (the usual pipeline).
register_method(MethodSpec("sft_grpo", RecipeConfig, phases=("sft_continued", "grpo")))
