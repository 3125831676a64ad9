from kedro.pipeline import Pipeline, node, pipeline

from .nodes import train_grao


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(train_grao, ["sft_model", "train_set", "params:grao", "params:rewards"],
             ["grao_model", "grao_training_log", "grao_training_curves"], name="train_grao"),
    ])
