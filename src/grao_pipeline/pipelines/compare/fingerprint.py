"""What made a comparison run, recorded beside its outputs, so that a rerun notices.

``--only-missing-outputs`` sees files, not parameters: after a change to ``grao.beta``
it would keep the runs trained with the old value and rebuild the table from them.
Each (method, seed) run therefore writes ``fingerprint.json``: digests of every config
it read (its method's sections, evaluation, rewards), the shared budget, and the
fingerprints of its inputs (starting weights, training and test rows); with
``compare.tuned``, the configs hold the tuned values. ``StaleRuns``, a
hook, compares them with the configuration in force before Kedro decides which nodes
are missing, and removes the outputs of each run that differs, naming what changed, so
that run is trained again.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import datasets
from kedro.framework.hooks import hook_impl

from grao_pipeline.alignment.checkpoints import (
    rows_fingerprint,
    value_fingerprint,
    weights_fingerprint,
)
from grao_pipeline.alignment.compare import CompareConfig
from grao_pipeline.alignment.config import EvalConfig, RewardConfig
from grao_pipeline.alignment.methods import get_method
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.alignment.run import reward_context
from grao_pipeline.alignment.search import tuned_sections
from grao_pipeline.hooks import active_parameters
from grao_pipeline.pipelines.compare.nodes import rollout_budget
from grao_pipeline.pipelines.training import method_inputs

log = logging.getLogger(__name__)

RUN_OUTPUTS = ("scored", "training_log", "fingerprint")


def input_fingerprints(start_policy: ModelAndTokenizer, train_set: datasets.Dataset,
                       test_set: datasets.Dataset) -> dict[str, str]:
    return {"starting weights": weights_fingerprint([start_policy.model])[:16],
            "training rows": rows_fingerprint(train_set.to_list())[:16],
            "test rows": rows_fingerprint(test_set.to_list())[:16]}


def config_fingerprint(cfg: Any) -> str:
    """A config's digest. The rewards', and evaluation's where it names a gold scorer,
    include the weights of the model folders they name (a reward model retrained in
    place keeps its path)."""
    if isinstance(cfg, RewardConfig):
        return value_fingerprint(reward_context(cfg))[:16]
    if isinstance(cfg, EvalConfig) and cfg.gold:
        return value_fingerprint({"evaluation": dataclasses.asdict(cfg),
                                  **reward_context(RewardConfig(components=cfg.gold))})[:16]
    return value_fingerprint(cfg)[:16]


def run_fingerprint(name: str, seed: int, budget: int, configs: dict[str, Any],
                    inputs: dict[str, str]) -> dict:
    """``configs``: catalog entry (``params:grao``) -> the config the run read."""
    return {"method": name, "seed": seed, "budget": budget,
            **{entry: config_fingerprint(cfg) for entry, cfg in configs.items()}, **inputs}


def tuned_input(method: str) -> str:
    """The catalog entry of the tuned values ``method`` runs with (``compare.tuned``):
    its own section's, so an ablation reads its parent's."""
    return f"tuned_{get_method(method).section}"


def curve_settings(settings: CompareConfig) -> dict[str, str]:
    """What a run's budget curve was measured on: a change reruns the run, so every run
    of a table has the same curve points (none, where curves are off)."""
    if not settings.curve_every:
        return {}
    return {"budget curve": f"every {settings.curve_every} steps, the first "
                            f"{settings.curve_prompts} validation prompts"}


def budget_sections(methods: list[str], sections: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """The sections the budget check reads: each method's tuned values (``tuned``:
    method -> its study's best values) over its own section."""
    for method, best in tuned.items():
        sections = tuned_sections(method, sections, best)
    return sections


def run_configs(name: str, parameters: dict, tuned: dict | None = None) -> dict[str, Any]:
    """The configs run ``name`` reads, built from the parameters in force and, where the
    comparison is tuned, its study's best values (every run's answers are scored with
    the rewards, whether or not it trains on them)."""
    configs = {entry: cls(**parameters.get(entry[len("params:"):], {}))
               for _, entry, cls in method_inputs(name)}
    if tuned is not None:
        sections = tuned_sections(name, {e[len("params:"):]: c for e, c in configs.items()}, tuned)
        configs = {f"params:{s}": c for s, c in sections.items()}
    return {**configs, "params:rewards": RewardConfig(**parameters.get("rewards", {})),
            "params:evaluation": EvalConfig(**parameters.get("evaluation", {}))}


def _path(catalog, name: str) -> Path:
    return Path(str(catalog.get(name)._filepath))  # kedro-datasets' file datasets


class StaleRuns:
    @hook_impl
    def before_pipeline_run(self, pipeline, catalog) -> None:
        parameters = active_parameters()
        runs = sorted({n.namespace for n in pipeline.nodes
                       if n.namespace and n.namespace.startswith("compare.")})
        if parameters is None or not runs:
            return
        settings = CompareConfig(**parameters.get("compare", {}))
        untuned = (sorted(n for n in {tuned_input(m) for m in settings.methods} if not catalog.exists(n))
                   if settings.tuned else [])
        if untuned:
            raise FileNotFoundError(
                f"compare.tuned is true, but no study has written {', '.join(untuned)} "
                f"({', '.join(str(_path(catalog, n)) for n in untuned)}). Run `kedro run "
                "--pipelines tuning` for those methods first (the verifiable env: with "
                "--params variant=<tuned_on>), or set compare.tuned: false")
        recorded = {ns: catalog.load(f"{ns}.fingerprint") for ns in runs
                    if catalog.exists(f"{ns}.fingerprint")}
        if not recorded or not all(catalog.exists(n) for n in (settings.start_policy, "train_set", "test_set")):
            return
        inputs = input_fingerprints(catalog.load(settings.start_policy), catalog.load("train_set"),
                                    catalog.load("test_set"))
        tuned = ({m: catalog.load(tuned_input(m)) for m in settings.methods}
                 if settings.tuned else {})
        sections = {e[len("params:"):]: c for m in settings.methods
                    for e, c in run_configs(m, parameters).items()}
        budget = rollout_budget(settings.methods, budget_sections(settings.methods, sections, tuned))
        for ns, old in recorded.items():
            _, method, seed = ns.split(".")
            new = run_fingerprint(method, int(seed.removeprefix("seed_")), budget,
                                  run_configs(method, parameters, tuned.get(method)),
                                  {**inputs, **curve_settings(settings)})
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if not changed:
                continue
            log.warning("%s: %s changed since it ran; its outputs are removed and it is "
                        "trained again", ns, ", ".join(changed))
            for output in RUN_OUTPUTS:
                _path(catalog, f"{ns}.{output}").unlink(missing_ok=True)
