"""The generated arithmetic task and its reward: the reward and the accuracy read the
`answer` column, never the (possibly wrong) reference."""

import pytest

from grao_pipeline.alignment.config import RewardConfig
from grao_pipeline.alignment.rewards import CompositeReward
from grao_pipeline.alignment.rewards.verifiable import (
    arithmetic_problems,
    exact_answer_reward,
    final_integer,
)


def test_problems_are_seeded_distinct_and_noisy_at_the_asked_rate():
    rows = arithmetic_problems(1000, digits=2, reference_error_rate=0.3, seed=1)
    assert rows == arithmetic_problems(1000, digits=2, reference_error_rate=0.3, seed=1)
    assert len({r["prompt"] for r in rows}) == 1000
    wrong = [r for r in rows if r["reference_is_wrong"]]
    assert 0.25 < len(wrong) / len(rows) < 0.35
    assert all(r["reference"] != r["answer"] for r in wrong)
    assert all(r["reference"] == r["answer"] for r in rows if not r["reference_is_wrong"])
    a, b = (int(x) for x in rows[0]["prompt"].split("What is ")[1].split("?")[0].split(" + "))
    assert int(rows[0]["answer"]) == a + b
    # plausible: off by at most 10, or the answer's digits with two swapped
    assert all(abs(int(r["reference"]) - int(r["answer"])) <= 10
               or sorted(r["reference"]) == sorted(r["answer"]) for r in wrong)


def test_noise_levels_share_their_problems_and_differ_only_in_references():
    clean = arithmetic_problems(500, reference_error_rate=0.0, seed=3)
    noisy = arithmetic_problems(500, reference_error_rate=0.3, seed=3)
    assert [(r["prompt"], r["answer"]) for r in clean] == [(r["prompt"], r["answer"]) for r in noisy]
    assert not any(r["reference_is_wrong"] for r in clean)
    assert sum(r["reference"] != c["reference"] for r, c in zip(noisy, clean, strict=True)) > 100


@pytest.mark.parametrize("text, value", [("57", "57"), ("The answer is 57.", "57"),
                                         ("12 + 45 = 57", "57"), ("about 1,057", "1057"), ("no", None)])
def test_final_integer(text, value):
    assert final_integer(text) == value


def test_the_reward_reads_the_answer_column_never_the_reference():
    reward = CompositeReward(RewardConfig(components={"exact_answer": {"weight": 1.0, "format_bonus": 0.1}}))
    prompts = ["What is 20 + 37?"] * 3
    completions = ["57", "It is 57.", "58"]
    wrong_reference = ["58"] * 3  # a wrong demonstration must not grade the model
    scores = reward(prompts, completions, wrong_reference, answer=["57"] * 3)
    assert scores == pytest.approx([1.1, 1.0, 0.0])
    with pytest.raises(KeyError, match="needs an 'answer' column"):
        exact_answer_reward()(prompts, completions, wrong_reference)


def test_held_out_accuracy_is_graded_by_the_answer_column_never_the_reference():
    import pandas as pd

    from grao_pipeline.alignment.evaluation import score_answers

    rewards = RewardConfig(components={"relevance": {"weight": 0}, "positivity": {"weight": 0},
                                       "profanity": {"weight": 0},
                                       "exact_answer": {"weight": 1.0, "format_bonus": 0.0}})
    answers = pd.DataFrame({
        "prompt": ["What is 20 + 37?", "What is 11 + 12?"],
        "reference": ["58", "23"],        # the first demonstration is wrong
        "completion": ["57", "24"],       # right, then wrong
        "length": [1, 1], "reference_length": [1, 1], "truncated": [False, False],
        "kl_from_start": [0.0, 0.0],
        "answer": ["57", "23"], "reference_is_wrong": [True, False]})
    scored = score_answers(answers, rewards, "m")
    assert scored["reward"].tolist() == [1.0, 0.0]          # accuracy = mean_reward = 0.5
    assert scored["reference_reward"].tolist() == [0.0, 1.0]  # the wrong y scores 0 too


def _variant_rows(name, n=400):
    from grao_pipeline.alignment.rewards.verifiable import variant

    v = variant(name)
    rows = arithmetic_problems(n, digits=v.digits, operands=v.operands,
                               reference_error_rate=v.reference_error_rate, seed=0,
                               reference_format=v.reference_format)
    reward = exact_answer_reward(format_bonus=v.format_bonus)
    y_scores = reward([r["prompt"] for r in rows], [r["reference"] for r in rows],
                      [r["reference"] for r in rows], answer=[r["answer"] for r in rows])
    return v, rows, y_scores


def test_each_variant_makes_the_data_and_reward_it_documents():
    # v0: the bare number; v1: the same problems, y written as the model writes it
    _, v0, s0 = _variant_rows("v0")
    _, v1, s1 = _variant_rows("v1")
    assert [r["prompt"] for r in v0] == [r["prompt"] for r in v1]
    assert all(r["reference"] == r["answer"] for r in v0) and s0 == [1.0] * len(v0)
    for r in v1:
        expression = r["prompt"].split("What is ")[1].split("?")[0]
        assert r["reference"] == f"{expression} = {r['answer']}"
    assert s1 == [1.0] * len(v1)  # correct under the answer check
    # v2: the same problems and format, 30% of y wrong in its result
    _, v2, s2 = _variant_rows("v2")
    assert [r["prompt"] for r in v2] == [r["prompt"] for r in v1]
    wrong = [r for r in v2 if r["reference_is_wrong"]]
    assert 0.25 < len(wrong) / len(v2) < 0.35
    assert all(r["reference"].split(" = ")[0] == c["reference"].split(" = ")[0]
               for r, c in zip(v2, v1, strict=True))
    assert sum(s2) == len(v2) - len(wrong)  # a wrong y scores 0
    # v3: y correct, yet below the reward's maximum, which the bare number reaches
    v, v3, s3 = _variant_rows("v3")
    assert v.format_bonus > 0 and all(1.0 <= s < 1.0 + v.format_bonus for s in s3)
    bare = exact_answer_reward(format_bonus=v.format_bonus)(
        [v3[0]["prompt"]], [v3[0]["answer"]], [v3[0]["reference"]], answer=[v3[0]["answer"]])
    assert bare == [1.0 + v.format_bonus]
    # v4: three operands, y correct
    _, v4, s4 = _variant_rows("v4")
    assert all(r["prompt"].count(" + ") == 2 for r in v4) and s4 == [1.0] * len(v4)


def test_variants_have_folders_of_their_own_and_unknown_ones_are_named():
    from grao_pipeline.alignment.rewards.verifiable import variant, variant_setting

    assert variant_setting("root", "v0") == "noise_0.0"  # where v0's outputs always were
    assert variant_setting("root", "v0", 0.3) == "noise_0.3"
    assert variant_setting("root", "v2") == variant_setting("root", "v2", 0.3) == "v2"
    assert variant_setting("root", "v1", 0.3) == "v1_noise_0.3"
    assert variant_setting("format_bonus", "v3") == 0.5
    with pytest.raises(ValueError, match="variant 'v9'.*v1 \\(clean\\)"):
        variant("v9")
