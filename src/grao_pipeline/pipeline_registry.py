"""Project pipelines, registered explicitly.

``__default__`` chains data -> SFT -> GRAO -> evaluation. The baselines and GRAO
ablations are one pipeline each (``kedro run --pipelines grpo``), built from one table
in ``pipelines/methods``; ``compare`` runs any set of them over seeds.
"""

from kedro.pipeline import Pipeline

from grao_pipeline.pipelines import compare, data_processing, evaluation, grao, methods, sft


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {
        "data_processing": data_processing.create_pipeline(),
        "sft": sft.create_pipeline(),
        "grao": grao.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
        "compare": compare.create_pipeline(),
        **methods.create_pipelines(),
    }
    pipelines["__default__"] = (pipelines["data_processing"] + pipelines["sft"]
                                + pipelines["grao"] + pipelines["evaluation"])
    return pipelines
