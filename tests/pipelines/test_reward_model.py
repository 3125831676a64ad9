"""Reward models: TRL's RewardTrainer learns pairs; the trained folder loads as a reward;
the Kedro pipeline reports held-out pair accuracy with an interval."""

import json

import pytest

from grao_pipeline.alignment.config import RewardConfig
from grao_pipeline.alignment.rewards import CompositeReward
from grao_pipeline.alignment.rewards.reward_model import (
    RewardModelConfig,
    classifier_scores,
    pair_accuracy,
    reward_model_from_policy,
    train_reward_model,
)

from .conftest import TINY_RUN, kedro_run

PAIRS = [{"prompt": p, "chosen": f"a good answer about {w}", "rejected": f"a bad answer about {w}"}
         for p, w in [("how are you?", "me"), ("tea?", "tea"), ("plans?", "hiking"), ("dogs?", "rex"),
                      ("music?", "jazz"), ("home?", "town"), ("food?", "pasta"), ("books?", "poems")]]


def margins(model, tokenizer):
    prompts = [p["prompt"] for p in PAIRS]
    chosen = classifier_scores(model, tokenizer, prompts, [p["chosen"] for p in PAIRS], 64, 8)
    rejected = classifier_scores(model, tokenizer, prompts, [p["rejected"] for p in PAIRS], 64, 8)
    return [c - r for c, r in zip(chosen, rejected, strict=True)]


@pytest.mark.slow
def test_reward_trainer_learns_its_pairs(tiny, tmp_path):
    cfg = RewardModelConfig(epochs=8.0, learning_rate=1e-3, batch_size=4, max_length=64)
    before = margins(reward_model_from_policy(tiny, cfg.seed), tiny.tokenizer)
    model = train_reward_model(tiny, PAIRS, cfg, tmp_path)
    after = margins(model, tiny.tokenizer)
    # Bradley-Terry pushes every chosen-minus-rejected margin up, and all above 0
    assert min(after) > 0 and sum(after) / len(after) > sum(before) / len(before) + 1.0, (before, after)
    assert pair_accuracy(model, tiny.tokenizer, PAIRS) == [1.0] * len(PAIRS)


@pytest.mark.slow
def test_reward_model_pipeline_writes_a_model_the_reward_loads(project):
    params = {**TINY_RUN, "dpo": {**TINY_RUN["dpo"], "synthetic_prompts": 12, "temperature": 1.0},
              "reward_model": {"epochs": 1.0, "batch_size": 4, "max_length": 64,
                               "bootstrap_resamples": 200}}
    kedro_run(project, ["data_processing", "sft", "reward_model"], params)
    report = json.loads((project / "data/08_reporting/reward_model_report.json").read_text())
    acc = report["held_out_accuracy"]
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"] and report["synthetic"] is True
    assert report["train_pairs"] + report["held_out_pairs"] == report["pairs"]["pairs"]
    folder = project / "data/06_models/reward_model"
    assert (folder / "model.safetensors").is_file()
    reward = CompositeReward(RewardConfig(components={"reward_model": {"weight": 1.0, "model": str(folder)}}))
    scores = reward(["how are you?", "tea?"], ["fine", "yes"], ["good", "no"])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
