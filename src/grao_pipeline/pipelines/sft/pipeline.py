from kedro.pipeline import Pipeline, node, pipeline

from grao_pipeline.pipelines.training import method_pipeline

from .nodes import export_base_model


def export_base_pipeline() -> Pipeline:
    """``base_model`` from ``base_model_source``: every pipeline that starts from the base
    model includes it, so each runs in a fresh clone on its own."""
    return pipeline([
        node(export_base_model, "base_model_source", "base_model", name="export_base_model"),
    ])


def create_pipeline(**kwargs) -> Pipeline:
    return export_base_pipeline() + method_pipeline("sft", start="base_model")
