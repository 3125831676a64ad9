"""One Kedro pipeline per baseline and GRAO ablation, each from the SFT warm start:
``kedro run --pipelines grpo`` writes ``grpo_model`` and ``grpo_training_log``."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import (
    make_preference_pairs,
    train_dpo,
    train_grao_ablation,
    train_grpo,
    train_ppo,
    train_sft_continued,
)

ABLATIONS = ("grao_no_imitation", "grao_no_regulariser", "grao_no_exploration")


def _outputs(name: str) -> list[str]:
    return [f"{name}_model", f"{name}_training_log", f"{name}_training_curves"]


def create_pipelines() -> dict[str, Pipeline]:
    rl = ["sft_model", "train_set"]
    pipelines = {
        "grpo": pipeline([node(train_grpo, rl + ["params:grpo", "params:rewards"],
                               _outputs("grpo"), name="train_grpo")]),
        "ppo": pipeline([node(train_ppo, rl + ["params:ppo", "params:rewards"],
                              _outputs("ppo"), name="train_ppo")]),
        "sft_continued": pipeline([node(train_sft_continued, rl + ["params:sft_continued"],
                                        _outputs("sft_continued"), name="train_sft_continued")]),
        "dpo": pipeline([
            node(make_preference_pairs, rl + ["params:dpo", "params:rewards"],
                 ["dpo_pairs", "dpo_pairs_report"], name="make_preference_pairs"),
            node(train_dpo, ["sft_model", "dpo_pairs", "params:dpo"], _outputs("dpo"),
                 name="train_dpo"),
        ]),
        "sft_grpo": pipeline([
            node(train_sft_continued, rl + ["params:sft_continued"],
                 ["sft_grpo_sft_phase_model", "sft_grpo_sft_phase_training_log",
                  "sft_grpo_sft_phase_training_curves"], name="train_sft_grpo_sft_phase"),
            node(train_grpo, ["sft_grpo_sft_phase_model", "train_set", "params:grpo", "params:rewards"],
                 _outputs("sft_grpo"), name="train_sft_grpo_grpo_phase"),
        ]),
    }
    for name in ABLATIONS:
        pipelines[name] = pipeline([node(
            train_grao_ablation,
            rl + ["params:grao", f"params:grao_ablations.{name}", "params:rewards"],
            _outputs(name), name=f"train_{name}")])
    return pipelines
