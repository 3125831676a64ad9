"""Evaluate each model in ``MODELS`` against the reference and the starting model."""

import pandas as pd
from kedro.pipeline import Pipeline, node, pipeline

from grao_pipeline.alignment.config import EvalConfig, RewardConfig
from grao_pipeline.alignment.evaluation import answer_prompts, score_answers

from .nodes import summarise_evaluation

START = "base"
MODELS = ("base", "sft", "grao")


def _score_as(label: str):
    """score_answers with the model label bound, under a name Kedro can log. The type
    hints matter: Kedro builds ``RewardConfig`` from ``params:rewards`` only for
    annotated node arguments."""

    def score(answers: pd.DataFrame, reward_params: RewardConfig, params: EvalConfig,
              start_answers: pd.DataFrame | None = None, **after: object) -> pd.DataFrame:
        return score_answers(answers, reward_params, label, start_answers, params.gold)

    score.__name__ = score.__qualname__ = f"score_{label}"
    return score


def create_pipeline(after: tuple[str, ...] = (), **kwargs) -> Pipeline:
    """``after``: datasets the scorers read by path through their settings (the default
    run's proxy and gold reward models), made inputs of the scoring nodes so that Kedro
    makes them first; their values are unused."""
    nodes = []
    for label in MODELS:
        is_start = label == START
        nodes += [
            node(answer_prompts,
                 {"policy": f"{label}_model", "test_set": "test_set", "params": "params:evaluation",
                  **({} if is_start else {"start_policy": f"{START}_model"})},
                 f"{label}_answers", name=f"answer_{label}"),
            node(_score_as(label),
                 {"answers": f"{label}_answers", "reward_params": "params:rewards",
                  "params": "params:evaluation",
                  **({} if is_start else {"start_answers": f"{START}_answers"}),
                  **{f"after_{i}": name for i, name in enumerate(after)}},
                 f"{label}_scored", name=f"score_{label}"),
        ]
    nodes.append(node(summarise_evaluation, ["params:evaluation"] + [f"{m}_scored" for m in MODELS],
                      ["evaluation_metrics", "evaluation_plot", "evaluation_completions"],
                      name="summarise_evaluation"))
    return pipeline(nodes)
