"""Sequential recipes: registered methods run one after another, each phase starting
from the policy the previous one left, each with its own parameters section."""

from grao_pipeline.alignment.methods.registry import MethodSpec, register_method

# "SFT then RL": more SFT on y from the warm start, then GRPO (the usual pipeline).
register_method(MethodSpec("sft_grpo", phases=("sft_continued", "grpo")))
