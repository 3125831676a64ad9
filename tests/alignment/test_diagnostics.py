"""Reward-hacking diagnostics on hand-made answers: the echoes and repetitions the
default reward was seen to pay for are caught, ordinary replies are not."""

import math

import pytest

from grao_pipeline.alignment.diagnostics import (
    distinct_n,
    distinct_n_ci,
    echo_fraction,
    echoes,
    empties,
    repeats,
    same_answers,
)


@pytest.mark.parametrize("question, answer, fraction", [
    ("i like to play volleyball what about you?", "i like to play volleyball", 1.0),
    ("And the pumpkin spice?", "and the pumpkin spice", 1.0),
    ("do you like tea?", "yes, green tea every morning", 0.2),
    ("hi?", "", 0.0),
])
def test_echo_fraction_is_the_share_of_answer_words_taken_from_the_question(question, answer, fraction):
    assert echo_fraction(question, answer) == pytest.approx(fraction)


def test_an_answer_is_an_echo_from_80_percent_copied_words():
    questions = ["hey thanks! what did you learn lately that was interesting?"] * 3
    answers = ["hey thanks! what did you learn lately",           # 7/7: an echo
               "what did you learn lately? chemistry",           # 5/6 = 0.83: an echo
               "i learned that plankton make our oxygen"]        # 1/7
    assert echoes(questions, answers).tolist() == [1.0, 1.0, 0.0]


def test_an_answer_without_a_word_is_empty():
    assert empties(["", "  ", "...", "ok", "i'm fine"]).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_an_answer_that_repeats_a_run_of_four_words_repeats_itself():
    answers = ["I'm not sure if I'm listening to the devotional. I'm not sure if I'm",  # GRAO, seed 0
               "i love playing volleyball. i love playing sports.",   # 3 words repeat, not 4
               "yes yes yes yes yes",                                 # "yes yes yes yes" twice
               "i like soccer and tennis", ""]
    assert repeats(answers).tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]


def test_one_answer_for_every_question_is_caught():
    assert same_answers(["yes", "Yes ", "yes", "no"]).tolist() == [1.0, 1.0, 1.0, 0.0]
    assert same_answers(["a", "b", "c"]).mean() == pytest.approx(1 / 3)
    assert same_answers([]).size == 0


def test_distinct_2_falls_with_repetition():
    varied = ["i like soccer and tennis", "my dog is called rex"]
    looping = ["i love playing sports. i love playing sports. i love playing sports."]
    assert distinct_n(varied) == 1.0
    assert distinct_n(looping) == pytest.approx(4 / 11)
    assert math.isnan(distinct_n(["one"]))


def test_distinct_2_interval_brackets_its_value():
    answers = ["i like tea", "i like coffee", "tea is nice", "i like tea"]
    ci = distinct_n_ci(answers, resamples=200, seed=0)
    assert ci["ci_low"] <= ci["value"] <= ci["ci_high"]
    assert ci["value"] == pytest.approx(distinct_n(answers))


def test_distinct_2_of_answers_without_two_words_is_null_not_nan():
    assert distinct_n_ci(["yes", "", "no"]) == {"value": None, "ci_low": None, "ci_high": None}


# ---- a held-out gold scorer beside the training reward (issue 32) --------------------

def _answers():
    import pandas as pd

    return pd.DataFrame({"prompt": ["do you like tea?", "any plans?"],
                         "reference": ["yes, green tea", "a long walk"],
                         "completion": ["do you like tea", "maybe a walk by the sea"],
                         "truncated": [False, False], "length": [4, 6], "reference_length": [3, 3],
                         "kl_from_start": [0.0, 0.0]})


def test_evaluation_refuses_to_call_the_training_reward_gold():
    from grao_pipeline.alignment.config import RewardConfig
    from grao_pipeline.alignment.evaluation import score_answers

    training = RewardConfig(components={"tests.helpers:length_reward": {"weight": 1.0}})
    with pytest.raises(ValueError, match=r"evaluation.gold names \['tests.helpers:length_reward'\], "
                                         r"which the training reward \(rewards.components\) also uses"):
        score_answers(_answers(), training, "grao", gold={"tests.helpers:length_reward": {"weight": 1.0}})


def test_a_held_out_gold_scorer_is_reported_beside_the_training_reward():
    from grao_pipeline.alignment.config import EvalConfig, RewardConfig
    from grao_pipeline.alignment.evaluation import score_answers
    from grao_pipeline.pipelines.evaluation.nodes import summarise_evaluation

    training = RewardConfig(components={"tests.helpers:length_reward": {"weight": 1.0}})
    gold = {"tests.helpers:echo_penalty": {"weight": 1.0}}
    scored = score_answers(_answers(), training, "grao", gold=gold)
    assert scored["gold_reward"].tolist() == [-1.0, 0.0]  # the first answer echoes
    metrics, _, _ = summarise_evaluation(EvalConfig(bootstrap_resamples=100, gold=gold), scored)
    assert metrics["grao"]["gold_reward"]["value"] == pytest.approx(-0.5)
    assert "gold_minus_training" in metrics["grao"] and "gold_reward" in metrics["reference"]


def test_the_over_optimisation_curve_is_measured_without_changing_what_training_samples(tokenizer, rows):
    """evaluation.curve_every: every k steps the log gains the held-out training reward,
    gold and KL, and the run trains exactly as it would without the curve."""
    import torch

    from grao_pipeline.alignment.config import EvalConfig, RewardConfig
    from grao_pipeline.alignment.evaluation import HeldOutCurve
    from grao_pipeline.alignment.methods.grao import GRAOMethodConfig
    from grao_pipeline.alignment.rewards import CompositeReward
    from grao_pipeline.alignment.run import train_method
    from tests.fixtures import tiny_model

    training = RewardConfig(components={"tests.helpers:length_reward": {"weight": 1.0}})
    params = EvalConfig(curve_every=2, curve_prompts=3, max_new_tokens=4, max_prompt_tokens=32,
                        gold={"tests.helpers:echo_penalty": {"weight": 1.0}})
    cfg = GRAOMethodConfig(steps=4, prompts_per_step=2, num_generations=2, max_completion_tokens=4,
                           learning_rate=1e-3, mixed_precision="fp32", show_progress=False,
                           temperature=1.0)
    runs = []
    for with_curve in (False, True):
        policy = tiny_model(tokenizer, seed=0)
        callbacks = [HeldOutCurve(policy, rows, params, training)] if with_curve else []
        trained, log, _ = train_method("grao", policy, rows, {"grao": cfg}, CompositeReward(training),
                                       callbacks=callbacks)
        runs.append((trained.model.state_dict(), log))
    (plain, _), (curved, log) = runs
    assert all(torch.equal(plain[k], curved[k]) for k in plain)
    assert [("heldout/gold" in r, "heldout/kl" in r) for r in log] == [(False, False), (True, True)] * 2
    assert log[1]["heldout/kl"] > 0 and -1.0 <= log[3]["heldout/gold"] <= 0.0
    assert log[3]["heldout/reward"] >= 0.0  # length_reward of the answers
