"""``reward_model``: one reward model of ``params:reward_model`` (any pair source and
backbone). ``reward_models``: the default run's two, ``proxy`` and ``gold``, each a
namespaced copy reading ``params:proxy_reward_model`` / ``params:gold_reward_model``
and the conversations alone (no start policy), so they train before SFT and are reused
while their settings and data stand."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import fit_reward_model, preference_pairs, split_pairs

ROLES = ("proxy", "gold")
"""The proxy is what every method trains against; the gold only judges (evaluation)."""


def _nodes(policy_inputs: dict[str, str]) -> Pipeline:
    return pipeline([
        node(preference_pairs, {"train_set": "train_set", "params": "params:reward_model",
                                **policy_inputs},
             ["preference_pairs", "preference_pairs_report"], name="preference_pairs"),
        node(split_pairs, ["preference_pairs", "params:reward_model"],
             ["reward_model_train_pairs", "reward_model_held_out_pairs"], name="split_pairs"),
        node(fit_reward_model, {"train_pairs": "reward_model_train_pairs",
                                "held_out": "reward_model_held_out_pairs",
                                "pairs_report": "preference_pairs_report", "params": "params:reward_model",
                                **({"start_policy": "sft_model"} if policy_inputs else {})},
             ["reward_model", "reward_model_report"], name="fit_reward_model"),
    ])


def create_pipeline(**kwargs) -> Pipeline:
    return _nodes({"start_policy": "sft_model", "dpo_params": "params:dpo",
                   "reward_params": "params:rewards"})


def create_role_pipelines() -> Pipeline:
    return sum((pipeline(_nodes({}), namespace=role, inputs={"train_set"},
                         parameters={"params:reward_model": f"params:{role}_reward_model"})
                for role in ROLES), Pipeline([]))
