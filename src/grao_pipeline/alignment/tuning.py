"""Optuna studies of a method's hyperparameters (β and λ by default).

A trial trains the registered method from a copy of the SFT warm start for a short
budget and scores the policy on the **validation** split (never the test split), with
greedy answers and the shared reward, exactly as evaluation scores the test split.
Every ``eval_every`` steps the intermediate score goes to ``trial.report`` and the
pruner may stop the trial.

Storage follows Optuna's own guidance, chosen by the URL alone:
- ``sqlite:///...``: one process; resumes with ``load_if_exists``;
- ``journal:<path>``: several processes on one machine (``JournalFileBackend``);
- any other SQLAlchemy URL (PostgreSQL): several machines.
RDB storages (SQLite, PostgreSQL) run heartbeats: a trial whose worker died is failed
after ``grace_period`` and retried (``RetryHeartbeatStaleTrialCallback``). Journal
storage has no heartbeat, so a killed worker's trial stays RUNNING there.

Workers share ``n_trials`` through ``MaxTrialsCallback``: each stops once the study as a
whole has that many finished (complete or pruned) trials.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import datasets
import numpy as np
import optuna
import sqlalchemy
from optuna.storages import (
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from grao_pipeline.alignment.checkpoints import (
    rows_fingerprint,
    value_fingerprint,
    weights_fingerprint,
)
from grao_pipeline.alignment.config import (
    ConfigError,
    EvalConfig,
    Range,
    RewardConfig,
    check_types,
    require,
)
from grao_pipeline.alignment.evaluation import answer_prompts, score_answers
from grao_pipeline.alignment.methods import parameter_sections, registered_methods
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.alignment.rewards import CompositeReward
from grao_pipeline.alignment.run import train_method
from grao_pipeline.alignment.studies import PerTrialSeed, bind_objective

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class StudyConfig:
    """What every Optuna study here shares: the method, the objective, the storage and
    the budget of one trial (see alignment/tuning.py)."""

    method: str = "grao"
    """Registered method each trial trains from the SFT warm start."""
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
        require(self.method in registered_methods(), self, "method",
                f"must be a registered method: {', '.join(registered_methods())}")
        require(bool(self.study_name), self, "study_name", "must be non-empty")
        require(self.storage.startswith(("sqlite:///", "journal:", "env:")) or "://" in self.storage,
                self, "storage", "must be sqlite:///<path>, journal:<path>, env:<VAR> or a "
                "SQLAlchemy URL")
        require(self.grace_period > self.heartbeat_interval, self, "grace_period",
                "must exceed heartbeat_interval")


@dataclass
class TuningConfig(StudyConfig):
    """``kedro run --pipelines tuning``: a resumable, prunable study of β and λ."""

    search_space: dict[str, dict] = field(default_factory=lambda: {
        "beta": {"low": 0.0, "high": 2.0, "log": False},
        "lam": {"low": 0.0, "high": 1.5, "log": False}})
    """Config field -> ``{low, high, log}`` (float; ``int: true`` for integers such as
    ``num_generations``) or ``{choices: [...]}``. Any field of the method's config:
    ``learning_rate``, ``num_generations``, ``temperature``..."""
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
    """Finished trials (complete or pruned) the study stops at, over all workers."""
    timeout: float | None = None
    """Seconds this worker may run before it stops starting trials; None = no limit."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, space in self.search_space.items():
            ok = isinstance(space, dict) and (
                ("choices" in space and bool(space["choices"])) or
                ({"low", "high"} <= set(space) and space["low"] < space["high"]))
            if not ok:
                raise ConfigError(f"TuningConfig.search_space.{name} = {space!r}: needs "
                                  "{low, high (> low), log} or {choices: [...]}")
            if space.get("log") and space.get("low", 1) <= 0:
                raise ConfigError(f"TuningConfig.search_space.{name}: a log range needs low > 0")
        require(bool(self.search_space), self, "search_space", "needs at least one parameter")
        known = {f.name for cls in parameter_sections(self.method).values() for f in fields(cls)}
        for name in self.search_space:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                raise ConfigError(f"TuningConfig.search_space.{name}: {self.method!r} has no such "
                                  "setting" + (f"; did you mean {close[0]!r}?" if close else
                                               f"; its settings are {', '.join(sorted(known))}"))
        require(self.timeout is None or self.timeout > 0, self, "timeout", "must be > 0 or null")


@dataclass
class SensitivityConfig(StudyConfig):
    """``kedro run --pipelines sensitivity``: a grid over β × λ, the centre cell
    repeated over seeds so the map shows its own noise."""

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
        require(len(self.betas) >= 1 and len(self.lams) >= 1, self, "betas",
                "betas and lams need a value each at least")
        require(self.centre.get("beta") in self.betas and self.centre.get("lam") in self.lams,
                self, "centre", "must be a cell of the grid")
        require(len(set(self.centre_seeds)) >= 2, self, "centre_seeds",
                "needs at least 2 distinct seeds to measure seed noise")



def storage_url(setting: str) -> str:
    """``env:VAR`` -> the URL in that variable (refused, naming it, when unset)."""
    if setting.startswith("env:"):
        var = setting[len("env:"):]
        if not os.environ.get(var):
            raise KeyError(f"tuning storage: environment variable {var!r} is not set")
        return os.environ[var]
    return setting


def make_storage(cfg: StudyConfig) -> optuna.storages.BaseStorage:
    url = storage_url(cfg.storage)
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    # Processes opening a new database together race to create Optuna's schema: the loser
    # gets "already exists" (a table) or a unique-key violation (alembic's revision stamp)
    # and, once the winner is done, can connect.
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5, and documented
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=cfg.heartbeat_interval,
                                  grace_period=cfg.grace_period,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                      cfg.max_retry))
        except sqlalchemy.exc.DBAPIError as err:
            lost_race = isinstance(err, sqlalchemy.exc.IntegrityError) or "already exists" in str(err)
            if not lost_race or attempt == 4:
                raise
            log.info("another worker is creating the Optuna schema in %s; retrying", cfg.storage)
            time.sleep(0.5 * (attempt + 1))


def suggest(trial: optuna.Trial, search_space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The trial's values for each searched config field."""
    values = {}
    for name, space in search_space.items():
        if "choices" in space:
            values[name] = trial.suggest_categorical(name, list(space["choices"]))
        elif space.get("int"):
            values[name] = trial.suggest_int(name, int(space["low"]), int(space["high"]),
                                             log=bool(space.get("log")))
        else:
            values[name] = trial.suggest_float(name, float(space["low"]), float(space["high"]),
                                               log=bool(space.get("log")))
    return values


@dataclasses.dataclass
class ValidationScore:
    """The objective: a policy's mean reward (or RAS) on the first ``eval_prompts``
    validation prompts, greedy, with the shared reward and judge."""

    validation_set: datasets.Dataset
    evaluation: EvalConfig
    rewards: RewardConfig
    objective: str

    def __call__(self, policy: ModelAndTokenizer) -> float:
        answers = answer_prompts(policy, self.validation_set, self.evaluation)
        scored = score_answers(answers, self.rewards, "trial")
        values = scored["reward"] if self.objective == "mean_reward" else scored["verdict_vs_reference"] > 0
        return float(np.mean(values))


def pruning_callback(trial: optuna.Trial, policy: ModelAndTokenizer, score: Callable,
                     every: int, last_step: int) -> Callable[[int, dict], None]:
    """Trainer callback: every ``every`` steps (before the last), report the validation
    score and raise ``TrialPruned`` when the pruner says so."""

    def report(step: int, row: dict) -> None:
        if step % every or step >= last_step:
            return
        value = score(policy)
        trial.report(value, step)
        log.info("trial %d step %d: validation %.4f", trial.number, step, value)
        if trial.should_prune():
            raise optuna.TrialPruned(f"validation {value:.4f} at step {step}")

    return report


def trial_objective(cfg: StudyConfig, start_policy: ModelAndTokenizer, rows: list[dict],
                    sections: Mapping[str, Any], score: ValidationScore,
                    space: Callable[[optuna.Trial], dict[str, Any]], eval_every: int | None
                    ) -> Callable[[optuna.Trial], float]:
    """Optuna objective: train ``cfg.method`` from a fresh copy of the warm start with
    the trial's values (``seed`` among them sets the training seed), return the score."""
    reward = CompositeReward(score.rewards)

    def objective(trial: optuna.Trial) -> float:
        values = space(trial)
        policy = ModelAndTokenizer(copy.deepcopy(start_policy.model), start_policy.tokenizer)
        changes = {"steps": cfg.steps, "checkpoint_dir": None, "checkpoint_every": 0,
                   "resume": False, "show_progress": False, **values}
        callbacks = ([pruning_callback(trial, policy, score, eval_every, cfg.steps)]
                     if eval_every else [])
        _, history, _ = train_method(cfg.method, policy, rows, sections, reward, changes=changes,
                                     callbacks=callbacks)
        trial.set_user_attr("train_reward_last", history[-1].get("reward/mean"))
        return score(policy)

    return objective


def objective_settings(cfg: StudyConfig, start_policy: ModelAndTokenizer, rows: list[dict],
                       sections: Mapping[str, Any], score: ValidationScore,
                       searched: set[str]) -> dict[str, str]:
    """What a trial's value depends on besides its proposed values (``searched``): trials
    of one study are comparable only while these stay the same."""
    fixed = {name: {k: v for k, v in (dataclasses.asdict(c) if dataclasses.is_dataclass(c)
                                      else dict(c)).items() if k not in searched}
             for name, c in sections.items()}
    return {"method": cfg.method, "objective": cfg.objective, "steps": str(cfg.steps),
            "eval_prompts": str(cfg.eval_prompts), "method parameters": value_fingerprint(fixed)[:16],
            "evaluation": value_fingerprint(score.evaluation)[:16],
            "rewards": value_fingerprint(score.rewards)[:16],
            "training rows": rows_fingerprint(rows)[:16],
            "validation rows": rows_fingerprint(score.validation_set.to_list())[:16],
            "start policy": weights_fingerprint([start_policy.model])[:16]}


def open_study(cfg: StudyConfig, search: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner | None = None,
               settings: dict[str, str] | None = None) -> optuna.Study:
    study = optuna.create_study(study_name=cfg.study_name, storage=make_storage(cfg),
                                sampler=search, pruner=pruner, direction="maximize",
                                load_if_exists=True)
    if settings is not None:
        bind_objective(study, settings)
    return study


def make_pruner(cfg: TuningConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials,
                                           n_warmup_steps=cfg.pruner_warmup_steps)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.eval_every, max_resource=cfg.steps)
    return optuna.pruners.NopPruner()


def make_search(cfg: TuningConfig) -> PerTrialSeed:
    kind = optuna.samplers.TPESampler if cfg.search == "tpe" else optuna.samplers.RandomSampler
    return PerTrialSeed(lambda seed: kind(seed=seed), cfg.search_seed)


def run_tuning(cfg: TuningConfig, start_policy: ModelAndTokenizer, rows: list[dict],
               sections: Mapping[str, Any], score: ValidationScore) -> optuna.Study:
    """Add trials to the study until it has ``n_trials`` finished ones (over every
    worker) or ``timeout`` passes; resumes whatever the storage already holds."""
    settings = objective_settings(cfg, start_policy, rows, sections, score, set(cfg.search_space))
    study = open_study(cfg, make_search(cfg), make_pruner(cfg), settings)
    objective = trial_objective(cfg, start_policy, rows, sections, score,
                                lambda t: suggest(t, cfg.search_space), cfg.eval_every)
    if _finished(study) < cfg.n_trials:
        study.optimize(objective, timeout=cfg.timeout, gc_after_trial=True,
                       callbacks=[optuna.study.MaxTrialsCallback(cfg.n_trials, states=FINISHED)])
    log.info("study %s: %d finished trials", cfg.study_name, _finished(study))
    return study


def run_sensitivity(cfg: SensitivityConfig, start_policy: ModelAndTokenizer, rows: list[dict],
                    sections: Mapping[str, Any], score: ValidationScore) -> list[optuna.Study]:
    """Every cell of β × λ on the first seed, plus the centre cell on the other seeds:
    one GridSampler study each, in one storage (``<study_name>`` and ``-centre``)."""
    grid = {"beta": list(cfg.betas), "lam": list(cfg.lams), "seed": [cfg.centre_seeds[0]]}
    centre = {"beta": [cfg.centre["beta"]], "lam": [cfg.centre["lam"]], "seed": list(cfg.centre_seeds[1:])}
    studies = []
    settings = objective_settings(cfg, start_policy, rows, sections, score, set(grid))
    for name, space in ((cfg.study_name, grid), (f"{cfg.study_name}-centre", centre)):
        study = open_study(dataclasses.replace(cfg, study_name=name),
                           optuna.samplers.GridSampler(space, seed=0), settings=settings)
        objective = trial_objective(
            cfg, start_policy, rows, sections, score,
            lambda t, s=space: {k: t.suggest_categorical(k, v) for k, v in s.items()}, None)
        cells = int(np.prod([len(v) for v in space.values()]))
        if _finished(study) < cells:
            study.optimize(objective, gc_after_trial=True,
                           callbacks=[optuna.study.MaxTrialsCallback(cells, states=FINISHED)])
        studies.append(study)
    return studies


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))
