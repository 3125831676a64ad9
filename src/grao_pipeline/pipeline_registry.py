"""Project pipelines.

``__default__`` chains data -> the proxy and gold reward models -> SFT -> GRAO (against
the proxy) -> evaluation (gold beside proxy). Every registered method
(``alignment/methods``) gets a pipeline of its own (``kedro run --pipelines grpo``), and
``compare`` gets one namespaced run per (method, seed) of ``compare.methods`` ×
``compare.seeds`` in the configuration in force. ``tuning`` and ``sensitivity`` run
Optuna studies of the method their parameters name. ``reward_model`` trains a reward
model on preference pairs with TRL's ``RewardTrainer``.
"""

from pathlib import Path

from kedro.config import OmegaConfigLoader
from kedro.framework.project import settings
from kedro.pipeline import Pipeline
from kedro.utils import find_kedro_project

from grao_pipeline.alignment.compare import CompareConfig
from grao_pipeline.alignment.methods import registered_methods
from grao_pipeline.alignment.tuning import SensitivityConfig, TuningConfig
from grao_pipeline.hooks import active_parameters
from grao_pipeline.pipelines import compare, data_processing, evaluation, reward_model, sft, tuning
from grao_pipeline.pipelines.training import method_pipeline


def configured(section: str) -> dict:
    """A parameters section as the running session has it (environment and ``--params``
    applied); outside one (``kedro registry``, kedro-viz), as conf/base + conf/local
    give it. Sections that shape pipelines (``compare``'s runs, the studied method)
    are read here."""
    parameters = active_parameters()
    if parameters is None:
        project = find_kedro_project(Path.cwd()) or Path.cwd()
        loader = OmegaConfigLoader(conf_source=str(project / settings.CONF_SOURCE),
                                   **settings.CONFIG_LOADER_ARGS)
        parameters = loader["parameters"]
    return parameters.get(section, {})


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {
        "data_processing": data_processing.create_pipeline(),
        "sft": sft.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
        "reward_model": reward_model.create_pipeline(),
        "reward_models": reward_model.create_role_pipelines(),
    }
    for name in registered_methods():
        if name not in pipelines:  # "sft" is the warm start, from base_model
            pipelines[name] = method_pipeline(name)
    pipelines["compare"] = compare.create_pipeline(CompareConfig(**configured("compare")))
    pipelines.update(tuning.create_pipelines(TuningConfig(**configured("tuning")),
                                             SensitivityConfig(**configured("sensitivity"))))
    # The proxy and gold reward models are read by path (rewards, evaluation.gold), so
    # the default run names their reports as inputs of the nodes that read them.
    proxy, gold = (f"{role}.reward_model_report" for role in reward_model.ROLES)
    pipelines["__default__"] = (pipelines["data_processing"] + pipelines["reward_models"]
                                + pipelines["sft"] + method_pipeline("grao", after=(proxy,))
                                + evaluation.create_pipeline(after=(proxy, gold)))
    return pipelines
