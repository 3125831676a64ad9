"""Every alignment method, one module each, behind one registry (``registry.py``).

Each module holds its config dataclass, its method and its registry entry. This face
imports the registry first, then the plug-ins, each of which registers itself; run a
registered name with ``alignment.run.train_method``.
"""

from grao_pipeline.alignment.methods import dpo, grao, grpo, grpo_sft, luffy, ppo, recipes, sft  # noqa: E402, F401, I001  (register)
from grao_pipeline.alignment.methods.base import BaseMethod, RolloutMethod, rollout_and_score  # noqa: E402
from grao_pipeline.alignment.methods.registry import (
    MethodSpec,
    get_method,
    parameter_sections,
    phase_specs,
    register_method,
    registered_methods,
    uses_reward,
)

__all__ = ["BaseMethod", "MethodSpec", "RolloutMethod", "get_method", "parameter_sections",
           "phase_specs", "register_method", "registered_methods", "rollout_and_score",
           "uses_reward"]
