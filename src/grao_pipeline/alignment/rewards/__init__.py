"""Rewards behind one batched interface, R(prompts, completions, references, **columns).

The registry comes first (``registry.py``, which imports no plug-in), then the plug-ins,
each registering itself on import: ``builtin`` (relevance, positivity, profanity,
reference similarity, finished), ``composite`` (the weighted sum), ``judge`` (the
paper's pairwise judge against y), ``reward_model`` (a trained sequence classifier) and
``verifiable`` (exact answers to generated problems). A reward of your own joins with
``register_reward``, or as ``"package.module:function"`` in config.
"""

from grao_pipeline.alignment.rewards import builtin, judge, reward_model, verifiable  # noqa: E402, I001  (register)
from grao_pipeline.alignment.rewards.composite import CompositeReward, pairwise_verdicts  # noqa: E402
from grao_pipeline.alignment.rewards.registry import (
    RewardFn,
    checked_scores,
    register_reward,
    registered_rewards,
    resolve_reward,
)

__all__ = ["CompositeReward", "RewardFn", "builtin", "checked_scores", "judge", "pairwise_verdicts",
           "register_reward", "registered_rewards", "resolve_reward", "reward_model", "verifiable"]
