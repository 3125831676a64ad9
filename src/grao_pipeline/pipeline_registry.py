"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

DEFAULT_CHAIN = ("data_processing", "sft", "grao", "evaluation")


def register_pipelines() -> dict[str, Pipeline]:
    """``__default__`` chains data -> SFT -> GRAO -> evaluation.

    Kedro >= 1.7 imports only the pipelines a run asks for, so the chain is built
    when all of its parts were loaded (always the case for a plain ``kedro run``).
    """
    pipelines = find_pipelines(raise_errors=True)
    if all(name in pipelines for name in DEFAULT_CHAIN):
        pipelines["__default__"] = sum((pipelines[n] for n in DEFAULT_CHAIN), Pipeline([]))
    return pipelines
