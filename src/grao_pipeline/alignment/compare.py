"""What ``kedro run --pipelines compare`` compares: ``CompareConfig`` names the methods,
the seeds and the policy they all start from, and is checked against the method
registry before any training starts. The comparison itself (one run per method and
seed, then the summary) is wired in ``pipelines/compare``; every run goes through
``run.train_method`` and ``evaluation``, so every method shares one harness.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from grao_pipeline.alignment.config import Range, check_types, require
from grao_pipeline.alignment.methods import registered_methods


def _default_compared() -> list[str]:
    return [m for m in registered_methods() if m != "sft"]


@dataclass
class CompareConfig:
    """Which methods the compare pipeline runs, over which seeds. ``methods`` and
    ``seeds`` shape the pipeline itself (one namespaced run per pair): set them in a
    config environment (conf/local, --env); ``--params`` can only pick a named set
    (``compare.methods=<set>``), since Kedro's command line takes no lists."""

    methods: list[str] | str = field(default_factory=_default_compared)
    """Registered methods to train from the same starting policy, each reading its own
    parameters section; or the name of one of ``method_sets``."""
    method_sets: dict[str, list[str]] = field(default_factory=dict)
    """Named lists of methods that ``methods`` may name."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Training seeds; every method runs once per seed."""
    reach_fraction: Annotated[float, Range(gt=0, le=1)] = 0.9
    """"Steps to reach" = first step where the smoothed training reward has made this
    fraction of its total gain (final − first)."""
    smoothing_window: Annotated[int, Range(ge=1)] = 3
    """Rolling-mean window (steps) for the training reward curve."""
    bootstrap_resamples: Annotated[int, Range(ge=100)] = 1000
    """Resamples of the two-level (seed, then prompt) bootstrap."""
    table_metrics: list[str] = field(default_factory=list)
    """The columns of the Markdown table, in order (empty: every metric); the CSV table
    always has them all."""
    start_policy: Literal["sft_model", "base_model"] = "sft_model"
    """The catalog model every run starts from and is compared against: ``sft_model``
    (the SFT warm start) or ``base_model`` (the untrained starting policy, e.g. for the
    verifiable task, where SFT on noisy demonstrations would differ between noise levels)."""
    curve_every: Annotated[int, Range(ge=0)] = 0
    """Budget curves: every ``curve_every`` optimiser steps of each run (each phase of a
    recipe counts its own), greedy answers to the first ``curve_prompts`` validation
    prompts scored with the training reward (accuracy on the verifiable task), in the
    run's step log (``heldout/reward``). Each point costs about one evaluation of
    ``curve_prompts`` prompts. 0: off."""
    curve_prompts: Annotated[int, Range(ge=1)] = 64
    """Validation prompts answered for each point of the budget curves (the same ones
    for every run)."""
    curve_target: Annotated[float, Range(gt=0)] = 0.5
    """The table's ``updates_to_target`` and ``samples_to_target``: the optimiser updates,
    and the demonstrations plus generated samples, a run spent before its budget curve
    first reached this validation score (no value where it never did)."""
    tuned: bool = False
    """Run each method with its study's best values (``tuned_<section>`` in the catalog,
    written by ``kedro run --pipelines tuning``) set over its parameters section; an
    ablation reads its parent's. A method never tuned stops the run, naming the file."""

    def __post_init__(self) -> None:
        check_types(self)
        if isinstance(self.methods, str):
            kind = "a method, not a set" if self.methods in registered_methods() else "no set"
            require(self.methods in self.method_sets, self, "methods",
                    f"names {kind}. Kedro's --params takes no lists: name a set of "
                    f"method_sets ({', '.join(sorted(self.method_sets)) or 'none defined'}), or "
                    "list the methods in conf/local/parameters_compare.yml "
                    "(compare: {methods: [grao, grpo]})")
            self.methods = list(self.method_sets[self.methods])
        unknown = [m for m in self.methods if m not in registered_methods()]
        require(not unknown and bool(self.methods), self, "methods",
                f"must be a non-empty list of registered methods {registered_methods()}")
        require(len(set(self.methods)) == len(self.methods), self, "methods", "has duplicates")
        require(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), self, "seeds",
                "must be non-empty and distinct")

