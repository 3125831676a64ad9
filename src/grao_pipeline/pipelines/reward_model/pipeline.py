from kedro.pipeline import Pipeline, node, pipeline

from .nodes import fit_reward_model, preference_pairs, split_pairs


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(preference_pairs, ["sft_model", "train_set", "params:dpo", "params:rewards",
                                "params:reward_model"],
             ["preference_pairs", "preference_pairs_report"], name="preference_pairs"),
        node(split_pairs, ["preference_pairs", "params:reward_model"],
             ["reward_model_train_pairs", "reward_model_held_out_pairs"], name="split_pairs"),
        node(fit_reward_model, ["sft_model", "reward_model_train_pairs", "reward_model_held_out_pairs",
                                "preference_pairs_report", "params:reward_model"],
             ["reward_model", "reward_model_report"], name="fit_reward_model"),
    ])
