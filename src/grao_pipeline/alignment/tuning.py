"""Optuna studies of each method's hyperparameters (GRAO's β and λ by default; what a
study searches is defined in ``search``).

A trial trains the registered method from a copy of the start policy for a short
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
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
    EvalConfig,
    RewardConfig,
)
from grao_pipeline.alignment.evaluation import answer_prompts, score_answers
from grao_pipeline.alignment.methods import get_method
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.alignment.rewards import CompositeReward
from grao_pipeline.alignment.run import train_method
from grao_pipeline.alignment.search import (
    SensitivityConfig,
    StudyConfig,
    TuningConfig,
    check_recipe_steps,
    suggest,
    with_values,
)
from grao_pipeline.alignment.studies import PerTrialSeed, bind_objective

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


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
    """Trainer callback: every ``every`` optimiser steps (before the last), report the
    validation score and raise ``TrialPruned`` when the pruner says so. Steps are counted
    here, over every phase of a recipe (each phase numbers its own steps from 1)."""
    done = 0

    def report(step: int, row: dict) -> None:
        nonlocal done
        done += 1
        if done % every or done >= last_step:
            return
        value = score(policy)
        trial.report(value, done)
        log.info("trial %d step %d: validation %.4f", trial.number, done, value)
        if trial.should_prune():
            raise optuna.TrialPruned(f"validation {value:.4f} at step {done}")

    return report


def trial_objective(cfg: StudyConfig, method: str, start_policy: ModelAndTokenizer,
                    rows: list[dict], sections: Mapping[str, Any], score: ValidationScore,
                    space: Callable[[optuna.Trial], dict[str, Any]], eval_every: int | None
                    ) -> Callable[[optuna.Trial], float]:
    """Optuna objective: train ``method`` from a fresh copy of the start policy with the
    trial's values set in its own section (``seed`` among them sets the training seed),
    for ``cfg.steps`` steps (a recipe: its ``phase_steps``, which add up to them), and
    return the score."""
    reward = CompositeReward(score.rewards)
    recipe = bool(get_method(method).phases)

    def objective(trial: optuna.Trial) -> float:
        values = space(trial)
        policy = ModelAndTokenizer(copy.deepcopy(start_policy.model), start_policy.tokenizer)
        changes = {"checkpoint_dir": None, "checkpoint_every": 0, "resume": False,
                   "show_progress": False, **({} if recipe else {"steps": cfg.steps})}
        callbacks = ([pruning_callback(trial, policy, score, eval_every, cfg.steps)]
                     if eval_every else [])
        _, history, _ = train_method(method, policy, rows, with_values(method, sections, values),
                                     reward, changes=changes, callbacks=callbacks)
        trial.set_user_attr("train_reward_last", history[-1].get("reward/mean"))
        return score(policy)

    return objective


def objective_settings(cfg: StudyConfig, method: str, start_policy: ModelAndTokenizer,
                       rows: list[dict], sections: Mapping[str, Any], score: ValidationScore,
                       searched: set[str]) -> dict[str, str]:
    """What a trial's value depends on besides its proposed values (``searched``): trials
    of one study are comparable only while these stay the same."""
    fixed = {name: {k: v for k, v in (dataclasses.asdict(c) if dataclasses.is_dataclass(c)
                                      else dict(c)).items() if k not in searched}
             for name, c in sections.items()}
    return {"method": method, "objective": cfg.objective, "steps": str(cfg.steps),
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


def run_tuning(cfg: TuningConfig, method: str, start_policy: ModelAndTokenizer, rows: list[dict],
               sections: Mapping[str, Any], score: ValidationScore) -> optuna.Study:
    """Add trials to ``method``'s study until it has ``n_trials`` finished ones (over
    every worker) or ``timeout`` passes; resumes whatever the storage already holds."""
    space = cfg.space(method)
    check_recipe_steps(method, sections, space, cfg.steps)
    named = dataclasses.replace(cfg, study_name=cfg.study(method))
    settings = objective_settings(cfg, method, start_policy, rows, sections, score, set(space))
    study = open_study(named, make_search(named), make_pruner(cfg), settings)
    objective = trial_objective(cfg, method, start_policy, rows, sections, score,
                                lambda t: suggest(t, space), cfg.eval_every)
    if _finished(study) < cfg.n_trials:
        study.optimize(objective, timeout=cfg.timeout, gc_after_trial=True,
                       callbacks=[optuna.study.MaxTrialsCallback(cfg.n_trials, states=FINISHED)])
    log.info("study %s: %d finished trials", named.study_name, _finished(study))
    return study


def run_sensitivity(cfg: SensitivityConfig, start_policy: ModelAndTokenizer, rows: list[dict],
                    sections: Mapping[str, Any], score: ValidationScore) -> list[optuna.Study]:
    """Every cell of β × λ on the first seed, plus the centre cell on the other seeds:
    one GridSampler study each, in one storage (``<study_name>`` and ``-centre``)."""
    grid = {"beta": list(cfg.betas), "lam": list(cfg.lams), "seed": [cfg.centre_seeds[0]]}
    centre = {"beta": [cfg.centre["beta"]], "lam": [cfg.centre["lam"]], "seed": list(cfg.centre_seeds[1:])}
    studies = []
    settings = objective_settings(cfg, cfg.method, start_policy, rows, sections, score, set(grid))
    for name, space in ((cfg.study_name, grid), (f"{cfg.study_name}-centre", centre)):
        study = open_study(dataclasses.replace(cfg, study_name=name),
                           optuna.samplers.GridSampler(space, seed=0), settings=settings)
        objective = trial_objective(
            cfg, cfg.method, start_policy, rows, sections, score,
            lambda t, s=space: {k: t.suggest_categorical(k, v) for k, v in s.items()}, None)
        cells = int(np.prod([len(v) for v in space.values()]))
        if _finished(study) < cells:
            study.optimize(objective, gc_after_trial=True,
                           callbacks=[optuna.study.MaxTrialsCallback(cells, states=FINISHED)])
        studies.append(study)
    return studies


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))
