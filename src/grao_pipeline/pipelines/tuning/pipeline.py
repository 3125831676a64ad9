"""``kedro run --pipelines tuning`` and ``--pipelines sensitivity``: Optuna studies that
train the configured method from the SFT warm start and score the validation split.
Running ``tuning`` again resumes the study; running it in several processes at once
(``make tune-worker``) adds workers to it."""

from __future__ import annotations

import datasets
from kedro.pipeline import Pipeline, node, pipeline

from grao_pipeline.alignment.config import EvalConfig, RewardConfig
from grao_pipeline.alignment.models import ModelAndTokenizer
from grao_pipeline.alignment.tuning import SensitivityConfig, TuningConfig
from grao_pipeline.pipelines.training import method_inputs, typed_function

from .nodes import sensitivity, tune


def _study_node(fn, name: str, config: str, config_cls: type, method: str, outputs: list[str]):
    sections = [(arg, entry, cls) for arg, entry, cls in method_inputs(method)
                if entry != "params:rewards"]

    def run(start_policy, train_set, validation_set, params, evaluation, reward_params, *method_params):
        return fn(start_policy, train_set, validation_set, params, evaluation, reward_params,
                  list(method_params))

    func = typed_function(run, name, [
        ("start_policy", ModelAndTokenizer), ("train_set", datasets.Dataset),
        ("validation_set", datasets.Dataset), ("params", config_cls), ("evaluation", EvalConfig),
        ("reward_params", RewardConfig), *[(arg, cls) for arg, _, cls in sections]])
    return node(func, ["sft_model", "train_set", "validation_set", f"params:{config}",
                       "params:evaluation", "params:rewards", *[e for _, e, _ in sections]],
                outputs, name=name)


def create_pipelines(tuning: TuningConfig, sensitivity_cfg: SensitivityConfig) -> dict[str, Pipeline]:
    return {
        "tuning": pipeline([_study_node(
            tune, "tune", "tuning", TuningConfig, tuning.method,
            ["tuning_trials", "tuning_best_parameters", "tuning_report", "tuning_history",
             "tuning_importances", "tuning_contour", "tuning_intermediate_values"])]),
        "sensitivity": pipeline([_study_node(
            sensitivity, "sensitivity", "sensitivity", SensitivityConfig, sensitivity_cfg.method,
            ["sensitivity_table", "sensitivity_report", "sensitivity_heatmap",
             "sensitivity_ablations_md"])]),
    }
