"""Evaluate each model in ``MODELS`` against the reference and the starting model."""

from functools import partial

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import answer_prompts, score_answers, summarise_evaluation

START = "base"
MODELS = ("base", "sft", "grao")


def create_pipeline(**kwargs) -> Pipeline:
    nodes = []
    for label in MODELS:
        is_start = label == START
        nodes += [
            node(answer_prompts,
                 {"policy": f"{label}_model", "test_set": "test_set", "params": "params:evaluation",
                  **({} if is_start else {"start_policy": f"{START}_model"})},
                 f"{label}_answers", name=f"answer_{label}"),
            node(partial(score_answers, label=label),
                 {"answers": f"{label}_answers", "reward_params": "params:rewards",
                  **({} if is_start else {"start_answers": f"{START}_answers"})},
                 f"{label}_scored", name=f"score_{label}"),
        ]
    nodes.append(node(summarise_evaluation, ["params:evaluation"] + [f"{m}_scored" for m in MODELS],
                      ["evaluation_metrics", "evaluation_plot", "evaluation_completions"],
                      name="summarise_evaluation"))
    return pipeline(nodes)
