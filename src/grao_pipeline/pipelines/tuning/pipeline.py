"""``kedro run --pipelines tuning`` and ``--pipelines sensitivity``: Optuna studies that
train methods from the start policy and score the validation split.

    tuning.<method>.tune     one study per method of ``tuning.methods``, each writing
                             tuning.<method>.{trials, best_parameters, report, <plot>}
    sensitivity              the β × λ grid of ``sensitivity.method``

Running ``tuning`` again resumes the studies; running it in several processes at once
(``make tune-worker``) adds workers to them; ``--namespaces tuning.grpo`` runs one."""

from __future__ import annotations

from functools import partial

import datasets
from kedro.pipeline import Pipeline, node, pipeline

from grao_pipeline.alignment.config import EvalConfig, RewardConfig
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.alignment.tuning import SensitivityConfig, TuningConfig
from grao_pipeline.pipelines.sft.pipeline import export_base_pipeline
from grao_pipeline.pipelines.training import method_inputs, typed_function

from .nodes import sensitivity, tune


def _study_node(fn, name: str, config: str, config_cls: type, method: str, start: str,
                outputs: list[str]):
    sections = [(arg, entry, cls) for arg, entry, cls in method_inputs(method)
                if entry != "params:rewards"]

    def run(start_policy, train_set, validation_set, params, evaluation, reward_params, *method_params):
        return fn(start_policy, train_set, validation_set, params, evaluation, reward_params,
                  list(method_params))

    func = typed_function(run, name, [
        ("start_policy", ModelAndTokenizer), ("train_set", datasets.Dataset),
        ("validation_set", datasets.Dataset), ("params", config_cls), ("evaluation", EvalConfig),
        ("reward_params", RewardConfig), *[(arg, cls) for arg, _, cls in sections]])
    return node(func, [start, "train_set", "validation_set", f"params:{config}",
                       "params:evaluation", "params:rewards", *[e for _, e, _ in sections]],
                outputs, name=name)


TUNING_OUTPUTS = ["trials", "best_parameters", "report", "history", "importances", "contour",
                  "intermediate_values"]


def _study_pipeline(tuning: TuningConfig, method: str) -> Pipeline:
    """``tuning.<method>``: the study node, its outputs namespaced by the method."""
    study = _study_node(partial(tune, method), "tune", "tuning", TuningConfig, method,
                        tuning.start_policy, TUNING_OUTPUTS)
    return pipeline([study], namespace=f"tuning.{method}",
                    inputs={tuning.start_policy, "train_set", "validation_set"},
                    parameters={i for i in study.inputs if i.startswith("params:")})


def create_pipelines(tuning: TuningConfig, sensitivity_cfg: SensitivityConfig) -> dict[str, Pipeline]:
    studies = sum((_study_pipeline(tuning, m) for m in tuning.methods), pipeline([]))
    if tuning.start_policy == "base_model":  # the verifiable task: no SFT stage before it
        studies += export_base_pipeline()
    return {
        "tuning": studies,
        "sensitivity": pipeline([_study_node(
            sensitivity, "sensitivity", "sensitivity", SensitivityConfig, sensitivity_cfg.method,
            "sft_model", ["sensitivity_table", "sensitivity_report", "sensitivity_heatmap",
                          "sensitivity_ablations_md"])]),
    }
