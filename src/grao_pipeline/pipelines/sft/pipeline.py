from kedro.pipeline import Pipeline, node, pipeline

from .nodes import export_base_model, train_sft


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(export_base_model, "base_model_source", "base_model", name="export_base_model"),
        node(train_sft, ["base_model", "train_set", "params:sft"],
             ["sft_model", "sft_training_log", "sft_training_curves"], name="train_sft"),
    ])
