"""Project pipelines.

``__default__`` chains data -> SFT -> GRAO -> evaluation. Every registered method
(``alignment/methods``) gets a pipeline of its own (``kedro run --pipelines grpo``), and
``compare`` gets one namespaced run per (method, seed) of ``compare.methods`` ×
``compare.seeds`` in the configuration in force.
"""

from pathlib import Path

from kedro.config import OmegaConfigLoader
from kedro.framework.project import settings
from kedro.pipeline import Pipeline
from kedro.utils import find_kedro_project

from grao_pipeline.alignment.config import CompareConfig
from grao_pipeline.alignment.methods import registered_methods
from grao_pipeline.hooks import active_parameters
from grao_pipeline.pipelines import compare, data_processing, evaluation, sft
from grao_pipeline.pipelines.training import method_pipeline


def compare_settings() -> CompareConfig:
    """``compare`` as configured for the running session; outside one (``kedro
    registry``, kedro-viz), as conf/base + conf/local give it."""
    parameters = active_parameters()
    if parameters is None:
        project = find_kedro_project(Path.cwd()) or Path.cwd()
        loader = OmegaConfigLoader(conf_source=str(project / settings.CONF_SOURCE),
                                   **settings.CONFIG_LOADER_ARGS)
        parameters = loader["parameters"]
    return CompareConfig(**parameters.get("compare", {}))


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {
        "data_processing": data_processing.create_pipeline(),
        "sft": sft.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
    }
    for name in registered_methods():
        if name not in pipelines:  # "sft" is the warm start, from base_model
            pipelines[name] = method_pipeline(name)
    pipelines["compare"] = compare.create_pipeline(compare_settings())
    pipelines["__default__"] = (pipelines["data_processing"] + pipelines["sft"]
                                + pipelines["grao"] + pipelines["evaluation"])
    return pipelines
