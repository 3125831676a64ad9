"""What keeps an Optuna study's trials comparable and distinct, over resumes and workers.

- ``bind_objective``: a study records the settings its trials' values depend on, and
  refuses new trials under other settings, naming each difference, so it never mixes
  trials of different objectives.
- ``PerTrialSeed``: each trial's proposals are seeded from (search seed, study, trial
  number); trial numbers are unique across workers, so a resumed study or an extra
  worker never repeats earlier proposals, and one worker's study is reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import optuna


class StudyMismatchError(ValueError):
    """A study resumed under other objective settings than its trials ran with."""


def bind_objective(study: optuna.Study, settings: dict[str, str]) -> None:
    """Record ``settings`` in a new study; refuse to add trials to one whose trials ran
    under other settings, naming each difference."""
    stored = study.user_attrs.get("objective_settings")
    if stored is None:
        study.set_user_attr("objective_settings", settings)
        return
    changed = [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in settings.items() if stored.get(k) != v]
    if changed:
        raise StudyMismatchError(
            f"study {study.study_name!r} holds trials run under other settings ({'; '.join(changed)}), "
            "so their values are not comparable with new ones. Give tuning.study_name a new "
            "name to start a fresh study, or put the settings back to resume this one")


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler seeded per trial from (search seed, study, trial number).

    One seed per process makes every resumed study and every extra worker propose the
    same first points again; trial numbers are unique across workers (the storage hands
    them out), so seeding by them gives each trial its own draw, and a study run by one
    worker stays reproducible."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self.make, self.seed = make, seed
        self._by_trial: dict[int, optuna.samplers.BaseSampler] = {}

    def _for(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number not in self._by_trial:
            digest = hashlib.sha256(f"{self.seed}:{study.study_name}:{trial.number}".encode()).digest()
            self._by_trial[trial.number] = self.make(int.from_bytes(digest[:4], "little"))
        return self._by_trial[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._for(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(study, trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._for(study, trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._for(study, trial).after_trial(study, trial, state, values)
        del self._by_trial[trial.number]
