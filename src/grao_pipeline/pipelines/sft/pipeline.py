from kedro.pipeline import Pipeline, node, pipeline

from grao_pipeline.pipelines.training import method_pipeline

from .nodes import export_base_model


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(export_base_model, "base_model_source", "base_model", name="export_base_model"),
    ]) + method_pipeline("sft", start="base_model")
