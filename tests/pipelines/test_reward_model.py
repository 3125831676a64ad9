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
    model = train_reward_model(reward_model_from_policy(tiny, cfg.seed), tiny.tokenizer, PAIRS, cfg, tmp_path)
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
    assert report["kinds"] == {"other_reply": 4, "echo": 4, "echo_cut": 4, "padded": 4, "reply_cut": 4,
                               "repeated": 4, "common_reply": 4}
    for p in pairs:
        i = int(p["prompt"].split()[-1].rstrip("?"))
        assert p["chosen"] == f"yes, sport {i} is fun"
        if p["kind"] == "echo":
            assert p["rejected"] == p["prompt"]
        elif p["kind"] == "echo_cut":
            assert p["rejected"] == "do you like"
        elif p["kind"] == "reply_cut":  # at most half of y's 4 words: "", "yes," or "yes, sport"
            assert p["rejected"] in ("", "yes,", "yes, sport")
        elif p["kind"] == "padded":  # y, then another question's reply
            assert p["rejected"].startswith(p["chosen"] + " yes, sport")
            assert p["rejected"] != f"{p['chosen']} {p['chosen']}"
        elif p["kind"] == "repeated":  # y said twice
            assert p["rejected"] == f"{p['chosen']} {p['chosen']}"
        elif p["kind"] == "common_reply":  # every reply is as common here: one of them, not y
            assert p["rejected"].startswith("yes, sport") and p["rejected"] != p["chosen"]
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
    assert set(by_kind) == {"other_reply", "echo", "echo_cut", "padded", "reply_cut", "repeated",
                            "common_reply"}
    assert by_kind["echo"]["value"] >= ECHO_BOUND, by_kind


def test_the_two_halves_of_the_conversations_share_no_question():
    from grao_pipeline.pipelines.reward_model.nodes import conversation_pairs

    rows = [{"prompt": f"question {i % 30}?", "reference": f"reply {i}"} for i in range(90)]
    halves = {h: {p["prompt"] for p in conversation_pairs(rows, prompts=90, seed=0, half=h)[0]}
              for h in ("first", "second")}
    assert halves["first"].isdisjoint(halves["second"])
    assert halves["first"] | halves["second"] == {r["prompt"] for r in rows}
    for h in ("first", "second"):  # other replies come from the same half too
        pairs, report = conversation_pairs(rows, prompts=90, seed=0, half=h)
        own = {r["reference"] for r in rows if r["prompt"] in halves[h]}
        assert {p["rejected"] for p in pairs if p["kind"] == "other_reply"} <= own
        assert report["half"] == h


def test_a_minilm_cross_encoder_reads_question_and_reply_as_a_text_pair():
    from grao_pipeline.alignment.rewards.reward_model import encode_pairs, untrained_reward_model

    model, tokenizer = untrained_reward_model(RewardModelConfig(backbone="minilm"))
    assert model.config.model_type == "bert" and model.config.num_labels == 1
    (ids,) = encode_pairs(tokenizer, ["how are you?"], ["fine thanks"], 64)
    assert tokenizer.decode(ids) == "[CLS] how are you? [SEP] fine thanks [SEP]"
    with pytest.raises(ValueError, match="backbone: policy needs the start policy"):
        untrained_reward_model(RewardModelConfig(backbone="policy"))


@pytest.mark.slow
def test_a_trained_reward_model_is_reused_only_for_the_same_settings_and_pairs(tiny, tmp_path, monkeypatch):
    """``cache_dir``: the same key loads the kept model instead of training; a changed
    setting trains again."""
    from grao_pipeline.pipelines.reward_model import nodes

    cfg = RewardModelConfig(epochs=1.0, batch_size=4, max_length=64, bootstrap_resamples=100,
                            cache_dir=str(tmp_path / "kept"))
    trained = []
    real = nodes.train_reward_model
    monkeypatch.setattr(nodes, "train_reward_model", lambda *a: trained.append(1) or real(*a))
    pairs = [p | {"kind": "dataset", "synthetic": False} for p in PAIRS]
    _, first = nodes.fit_reward_model(pairs[:6], pairs[6:], {}, cfg, tiny)
    bundle, again = nodes.fit_reward_model(pairs[:6], pairs[6:], {}, cfg, tiny)
    assert len(trained) == 1 and again == first and bundle.model.config.num_labels == 1
    nodes.fit_reward_model(pairs[:6], pairs[6:], {}, RewardModelConfig(**{**cfg.__dict__, "learning_rate": 1e-4}), tiny)
    nodes.fit_reward_model(pairs[:5], pairs[5:], {}, cfg, tiny)
    assert len(trained) == 3 and len(list((tmp_path / "kept").iterdir())) == 3


def test_a_reward_model_retrained_in_place_changes_what_a_run_depends_on(tiny, tmp_path):
    """A reward model folder keeps its path when it is trained again; the run context
    (checkpoint resume) and compare's run fingerprint see its weights, not its path."""
    from grao_pipeline.alignment.config import EvalConfig
    from grao_pipeline.alignment.models import ModelAndTokenizer, save_model
    from grao_pipeline.alignment.run import reward_context
    from grao_pipeline.pipelines.compare.fingerprint import config_fingerprint

    folder = tmp_path / "proxy"
    rewards = RewardConfig(components={"reward_model": {"weight": 1.0, "model": str(folder)}})
    gold = EvalConfig(gold={"reward_model": {"weight": 1.0, "model": str(folder)}})
    seen = []
    for seed in (0, 1, 1):
        save_model(ModelAndTokenizer(reward_model_from_policy(tiny, seed=seed), tiny.tokenizer), folder)
        seen.append((reward_context(rewards), config_fingerprint(rewards), config_fingerprint(gold)))
    assert seen[0][0]["rewards"] == seen[1][0]["rewards"]  # same settings, same path
    assert all(a != b for a, b in zip(seen[0], seen[1], strict=True))
    assert seen[1] == seen[2]


@pytest.mark.slow
def test_the_proxy_and_gold_reward_models_train_once_and_are_reused(project, caplog):
    """`kedro run --pipelines reward_models`: two MiniLM reward models from opposite
    halves of the conversations; a rerun with the same settings and data loads them."""
    kedro_run(project, ["data_processing", "reward_models"])
    reports = {r: json.loads((project / f"data/08_reporting/{r}_reward_model_report.json").read_text())
               for r in ("proxy", "gold")}
    assert reports["proxy"]["key"] != reports["gold"]["key"]
    assert [reports[r]["pairs"]["half"] for r in ("proxy", "gold")] == ["first", "second"]
    with caplog.at_level("INFO", logger="grao_pipeline.pipelines.reward_model.nodes"):
        kedro_run(project, ["reward_models"])
    assert caplog.text.count("reusing") == 2
    assert all(json.loads((project / f"data/08_reporting/{r}_reward_model_report.json").read_text())
               == reports[r] for r in ("proxy", "gold"))


def test_common_reply_negatives_are_the_most_frequent_human_replies(monkeypatch):
    from grao_pipeline.pipelines.reward_model import nodes

    monkeypatch.setattr(nodes, "COMMON_REPLIES", 1)
    rows = [{"prompt": f"question {i}?", "reference": "yeah" if i % 3 == 0 else f"reply {i}"}
            for i in range(30)]
    pairs, report = nodes.conversation_pairs(rows, prompts=30, seed=0)
    common = [p for p in pairs if p["kind"] == "common_reply"]
    assert {p["rejected"] for p in common} == {"yeah"}  # the most frequent reply
    assert report["kinds"]["common_reply"] == 20  # none where y is that reply itself
