from kedro.pipeline import Pipeline, node, pipeline

from .nodes import run_comparison, summarise_comparison


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(run_comparison,
             ["sft_model", "train_set", "test_set", "params:compare", "params:grao", "params:grpo",
              "params:ppo", "params:dpo", "params:sft_continued", "params:grao_ablations",
              "params:rewards", "params:evaluation"],
             ["compare_scored", "compare_training_logs"], name="run_comparison"),
        node(summarise_comparison, ["compare_scored", "compare_training_logs", "params:compare"],
             ["compare_table", "compare_table_md", "compare_reward_curves", "compare_grao_shares",
              "compare_completions"], name="summarise_comparison"),
    ])
