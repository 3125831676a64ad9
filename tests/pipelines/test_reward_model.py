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

# Measured with the test's settings (tiny random model, 200 prompts, 2 epochs): held-out
# echo accuracy 0.725 [0.60, 0.85] over 40 prompts; the bound is that interval's low end,
# above chance (0.5). (other_reply stays at chance, 0.475, for a model this small.)
ECHO_BOUND = 0.6
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


def test_conversation_pairs_hold_the_reply_against_another_reply_and_the_echoed_question():
    from grao_pipeline.pipelines.reward_model.nodes import conversation_pairs, split_pairs

    rows = [{"prompt": f"do you like sport number {i}?", "reference": f"yes, sport {i} is fun"}
            for i in range(10)]
    pairs, report = conversation_pairs(rows, prompts=4, seed=0)
    assert report["kinds"] == {"other_reply": 4, "echo": 4, "echo_cut": 4}
    for p in pairs:
        i = int(p["prompt"].split()[-1].rstrip("?"))
        assert p["chosen"] == f"yes, sport {i} is fun"
        if p["kind"] == "echo":
            assert p["rejected"] == p["prompt"]
        elif p["kind"] == "echo_cut":
            assert p["rejected"] == "do you like"
        else:
            assert p["rejected"].startswith("yes, sport") and p["rejected"] != p["chosen"]
    train, held = split_pairs(pairs, RewardModelConfig(eval_fraction=0.25))
    assert {p["prompt"] for p in train}.isdisjoint({p["prompt"] for p in held})


@pytest.mark.slow
def test_a_reward_model_on_conversation_pairs_ranks_the_reply_above_the_echo(project):
    """Issue 32: a tiny model trained on the pipeline's conversation pairs prefers the
    human reply to the echoed question on held-out prompts more often than chance."""
    params = {**TINY_RUN, "reward_model": {
        "pair_source": "conversations", "conversation_prompts": 200, "epochs": 2.0,
        "learning_rate": 1e-3, "batch_size": 8, "max_length": 64, "bootstrap_resamples": 200}}
    kedro_run(project, ["data_processing", "sft", "reward_model"], params)
    report = json.loads((project / "data/08_reporting/reward_model_report.json").read_text())
    assert report["pairs"]["kinds"]["echo"] == 200 and report["synthetic"] is False
    by_kind = report["held_out_accuracy_by_kind"]
    assert set(by_kind) == {"other_reply", "echo", "echo_cut"}
    assert by_kind["echo"]["value"] >= ECHO_BOUND, by_kind
