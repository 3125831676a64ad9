"""What a study searches: the study configs, their search spaces, and how a trial's
values (or a study's best values) reach the section of the method they tune. Separate
from ``tuning`` (which runs studies) so that ``compare`` can apply tuned values without
importing Optuna's storages.

A trial's values are set in the method's **own** parameters section: a plain method's
config, or a recipe's ``RecipeConfig`` (its split of steps and one learning rate for
every phase), never the sections its phases share with other methods.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Annotated, Any, Literal

from grao_pipeline.alignment.config import ConfigError, Range, check_types, require
from grao_pipeline.alignment.methods import get_method, registered_methods

if TYPE_CHECKING:
    import optuna


@dataclass
class StudyConfig:
    """What every Optuna study here shares: the objective, the storage and the budget of
    one trial (see alignment/tuning.py)."""

    objective: Literal["mean_reward", "ras"] = "mean_reward"
    """Validation score maximised: mean reward, or RAS (win rate against y)."""
    study_name: str = "grao-beta-lambda"
    """Name of the study in the storage; reusing it resumes the study."""
    storage: str = "sqlite:///data/09_tuning/optuna.db"
    """``sqlite:///<path>`` (one process), ``journal:<path>`` (several processes on one
    machine: JournalFileBackend), any SQLAlchemy URL such as
    ``postgresql+psycopg://user@host/db`` (several machines), or ``env:<VAR>`` to read
    the URL from an environment variable (keeps passwords out of conf/base)."""
    steps: Annotated[int, Range(ge=1)] = 8
    """Optimiser steps per trial (the trial's budget)."""
    eval_prompts: Annotated[int, Range(ge=2)] = 24
    """Validation prompts scored per evaluation (never the test split)."""
    heartbeat_interval: Annotated[int, Range(ge=1)] = 10
    """Seconds between a running trial's heartbeats (RDB storages only)."""
    grace_period: int = 30
    """A running trial with no heartbeat for this long is failed and retried."""
    max_retry: Annotated[int, Range(ge=0)] = 2
    """Retries of a trial whose worker died."""

    def __post_init__(self) -> None:
        check_types(self)
        require(bool(self.study_name), self, "study_name", "must be non-empty")
        require(self.storage.startswith(("sqlite:///", "journal:", "env:")) or "://" in self.storage,
                self, "storage", "must be sqlite:///<path>, journal:<path>, env:<VAR> or a "
                "SQLAlchemy URL")
        require(self.grace_period > self.heartbeat_interval, self, "grace_period",
                "must exceed heartbeat_interval")


@dataclass
class TuningConfig(StudyConfig):
    """``kedro run --pipelines tuning``: one resumable, prunable study per method, each
    with the same trials, sampler, pruner and budget, so that the methods compared after
    tuning each got the same search."""

    methods: list[str] = field(default_factory=lambda: ["grao"])
    """Registered methods to tune: one study each, named ``<study_name>.<method>``, with
    outputs of its own (``tuning.<method>.*`` in the catalog)."""
    study_name: str = "tuning"
    """Prefix of each method's study name in the storage; reusing it resumes the studies."""
    start_policy: Literal["sft_model", "base_model"] = "sft_model"
    """Policy every trial starts from: the SFT warm start (chit-chat), or the base model
    (the verifiable task, where ``compare`` starts from it too)."""
    search_space: dict[str, dict] = field(default_factory=dict)
    """Searched in every method's study, for example ``learning_rate``: field ->
    ``{low, high, log}`` (float; ``int: true`` for integers such as ``num_generations``)
    or ``{choices: [...]}`` (any YAML values, lists included)."""
    method_search_space: dict[str, dict[str, dict]] = field(default_factory=lambda: {
        "grao": {"beta": {"low": 0.0, "high": 2.0, "log": False},
                 "lam": {"low": 0.0, "high": 1.5, "log": False}}})
    """Method -> its own knobs, searched in that method's study only (GRAO's β and λ,
    GRPO's ``kl_coef``...). Each is a field of the method's own parameters section; a
    recipe's are ``phase_steps`` and ``learning_rate``. Methods not in ``methods`` are
    ignored, so one file can hold every method's knobs."""
    search: Literal["tpe", "random"] = "tpe"
    """How trials are proposed: TPE (Optuna's default sampler, seeded) or random search."""
    search_seed: int = 0
    """Seeds each trial's proposals with the study name and the trial number: one
    worker's study is reproducible, and a resumed study or an extra worker never repeats
    earlier proposals."""
    pruner: Literal["median", "hyperband", "none"] = "median"
    """Stops trials whose intermediate validation score is poor."""
    pruner_startup_trials: Annotated[int, Range(ge=0)] = 3
    """MedianPruner: trials completed before any pruning."""
    pruner_warmup_steps: Annotated[int, Range(ge=0)] = 0
    """MedianPruner: steps of a trial before it can be pruned."""
    eval_every: Annotated[int, Range(ge=1)] = 4
    """Report an intermediate validation score to the pruner every k steps."""
    n_trials: Annotated[int, Range(ge=1)] = 12
    """Finished trials (complete or pruned) each study stops at, over all workers."""
    timeout: float | None = None
    """Seconds this worker may run before it stops starting trials; None = no limit."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.methods) and len(set(self.methods)) == len(self.methods), self, "methods",
                "needs at least one method, each once")
        for method in self.methods:
            require(method in registered_methods(), self, "methods",
                    f"{method!r} is not a registered method: {', '.join(registered_methods())}")
            space = self.space(method)
            if not space:
                raise ConfigError(f"TuningConfig.methods: {method!r} searches nothing; give it "
                                  f"knobs in method_search_space.{method}, or a shared search_space "
                                  "(learning_rate)")
            for where, part in (("search_space", self.search_space),
                                (f"method_search_space.{method}", self.method_search_space.get(method, {}))):
                for name, values in part.items():
                    _check_space(f"{where}.{name}", values)
                _check_searchable(method, part, f"TuningConfig.{where}")
        require(self.timeout is None or self.timeout > 0, self, "timeout", "must be > 0 or null")

    def space(self, method: str) -> dict[str, dict]:
        """What ``method``'s study searches: the shared space, then its own knobs."""
        return {**self.search_space, **self.method_search_space.get(method, {})}

    def study(self, method: str) -> str:
        return f"{self.study_name}.{method}"


def _check_space(name: str, space: Any) -> None:
    ok = isinstance(space, dict) and (
        ("choices" in space and isinstance(space["choices"], list) and bool(space["choices"])) or
        ({"low", "high"} <= set(space) and space["low"] < space["high"]))
    if not ok:
        raise ConfigError(f"TuningConfig.{name} = {space!r}: needs "
                          "{low, high (> low), log} or {choices: [...]}")
    if space.get("log") and space.get("low", 1) <= 0:
        raise ConfigError(f"TuningConfig.{name}: a log range needs low > 0")


def _check_searchable(method: str, space: Mapping[str, Any], where: str) -> None:
    """Each searched name is a field of the method's own section that the method does not
    fix (an ablation's overrides): the trial's value is set there."""
    spec = get_method(method)
    if spec.config_cls is None:
        raise ConfigError(f"{where}: recipe {method!r} has no settings of its own to tune")
    if spec.params is not None:
        raise ConfigError(f"{where}: {method!r} reads {spec.params!r}'s parameters "
                          f"section; tune {spec.params!r}, and {method!r} runs with its values")
    known = {f.name for f in fields(spec.config_cls)}
    for name in space:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            raise ConfigError(f"{where}.{name}: {method!r} has no such "
                              "setting" + (f"; did you mean {close[0]!r}?" if close else
                                           f"; its settings are {', '.join(sorted(known))}"))
        if name in spec.overrides:
            raise ConfigError(f"{where}.{name}: {method!r} fixes "
                              f"{name} = {spec.overrides[name]!r}; tune its parent method instead")


@dataclass
class SensitivityConfig(StudyConfig):
    """``kedro run --pipelines sensitivity``: a grid over β × λ, the centre cell
    repeated over seeds so the map shows its own noise."""

    method: str = "grao"
    """Registered method each cell trains from the SFT warm start (one with β and λ)."""
    study_name: str = "grao-sensitivity"
    """Name of the grid study in the storage; reusing it resumes the grid."""
    betas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0])
    """β values of the grid (0 = the no-imitation ablation)."""
    lams: list[float] = field(default_factory=lambda: [0.0, 0.3, 0.6, 1.2])
    """λ values of the grid (0 = the no-regulariser ablation)."""
    centre: dict[str, float] = field(default_factory=lambda: {"beta": 0.5, "lam": 0.6})
    """The cell repeated over seeds (the paper's values)."""
    centre_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds of the centre cell; every other cell runs the first seed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.method in registered_methods(), self, "method",
                f"must be a registered method: {', '.join(registered_methods())}")
        _check_searchable(self.method, {"beta": None, "lam": None}, "SensitivityConfig.method")
        require(len(self.betas) >= 1 and len(self.lams) >= 1, self, "betas",
                "betas and lams need a value each at least")
        require(self.centre.get("beta") in self.betas and self.centre.get("lam") in self.lams,
                self, "centre", "must be a cell of the grid")
        require(len(set(self.centre_seeds)) >= 2, self, "centre_seeds",
                "needs at least 2 distinct seeds to measure seed noise")


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def suggest(trial: optuna.Trial, search_space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The trial's values for each searched config field. Optuna's categorical choices
    are plain values only, so a list choice (a recipe's ``phase_steps``) is proposed as
    its JSON text and decoded back (``decoded``)."""
    values = {}
    for name, space in search_space.items():
        if "choices" in space:
            choices = [c if _is_plain(c) else json.dumps(c) for c in space["choices"]]
            values[name] = trial.suggest_categorical(name, choices)
        elif space.get("int"):
            values[name] = trial.suggest_int(name, int(space["low"]), int(space["high"]),
                                             log=bool(space.get("log")))
        else:
            values[name] = trial.suggest_float(name, float(space["low"]), float(space["high"]),
                                               log=bool(space.get("log")))
    return decoded(values, search_space)


def decoded(params: Mapping[str, Any], search_space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A trial's Optuna params as config values: JSON-encoded list choices decoded."""
    return {name: json.loads(value) if "choices" in search_space.get(name, {}) and not any(
                value == c and type(value) is type(c) for c in search_space[name]["choices"])
            else value for name, value in params.items()}


def _own(method: str, sections: Mapping[str, Any]) -> Any:
    """``method``'s own section as its config (given as a mapping or already validated)."""
    spec = get_method(method)
    own = sections[spec.section]
    return spec.config_cls(**own) if isinstance(own, Mapping) else own


def with_values(method: str, sections: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``sections`` with ``values`` set in ``method``'s own section (a recipe's: its
    ``RecipeConfig``, whose learning rate and split reach every phase)."""
    return {**sections, get_method(method).section: dataclasses.replace(_own(method, sections), **values)}


def tuned_sections(method: str, sections: Mapping[str, Any], tuned: Mapping[str, Any]) -> dict[str, Any]:
    """``sections`` with a study's best values set in ``method``'s own section. ``tuned``
    is what the study wrote (``tuning.<method>.best_parameters``: ``{section: {field:
    value}}``); an ablation reads its parent's, as it reads its parent's section."""
    own = get_method(method).section
    other = sorted(set(tuned) - {own})
    if other:
        raise ConfigError(f"tuned settings for {method!r} set sections {other}; a study of "
                          f"{own!r} writes only {own!r}")
    return with_values(method, sections, tuned.get(own) or {})


def check_recipe_steps(method: str, sections: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]],
                       steps: int) -> None:
    """A recipe's trial spends its ``phase_steps``, so every split it can try must add up
    to the study's ``steps``: a recipe otherwise gets a different budget from the methods
    it is compared with."""
    spec = get_method(method)
    if not spec.phases:
        return
    splits = (space["phase_steps"]["choices"] if "phase_steps" in space
              else [_own(method, sections).phase_steps])
    wrong = [split for split in splits if split is None or sum(split) != steps]
    if wrong:
        raise ConfigError(f"tuning {method!r}: phase_steps {wrong} do not add up to the study's "
                          f"steps = {steps}; give {spec.section}.phase_steps (or its choices in "
                          f"method_search_space) splits of {steps} steps")
