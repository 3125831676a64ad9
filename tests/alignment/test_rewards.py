import pytest
import torch

from grao_pipeline.alignment.config import RewardConfig
from grao_pipeline.alignment.rewards import (
    CompositeReward,
    pairwise_verdicts,
    register_reward,
    resolve_reward,
)
from tests.fixtures import PairwiseJudge
from tests.helpers import length_reward


def component(name):
    return resolve_reward(name, {})


def test_relevance_prefers_on_topic_answers():
    r = component("relevance")(["what is your favourite food?"] * 2,
                               ["I love pizza and pasta", "the train leaves at noon"], ["", ""])
    assert r[0] > r[1] and all(-1.0 <= x <= 1.0 for x in r)


def test_positivity_is_vader_compound():
    r = component("positivity")(["q"] * 3, ["I love it, wonderful!", "this is terrible", "ok"],
                                [""] * 3)
    assert r[0] > 0.5 and r[1] < -0.3 and r[2] == pytest.approx(0.296, abs=0.01)


def test_profanity_penalises_profane_answers():
    r = component("profanity")(["q"] * 2, ["you are a fucking idiot", "have a nice day"], [""] * 2)
    assert r[0] < -0.9 and r[1] > -0.1


def test_reference_similarity_makes_the_reference_maximal():
    y = "I walk my dog every morning"
    r = component("reference_similarity")(["q"] * 2, [y, "I like cars"], [y, y])
    assert r[0] == pytest.approx(1.0, abs=1e-5) and r[1] < r[0]


def test_composite_is_the_weighted_sum():
    cfg = RewardConfig(components={"positivity": {"weight": 0.5}, "profanity": {"weight": 2.0}})
    reward = CompositeReward(cfg)
    parts = reward.components_and_total(["q"], ["great, thanks!"], ["y"])
    assert parts["total"][0] == pytest.approx(0.5 * parts["positivity"][0] + 2.0 * parts["profanity"][0])


def test_plain_functions_by_registered_name_or_import_path():
    register_reward("test_length")(length_reward)
    for name in ("test_length", "tests.helpers:length_reward"):
        reward = CompositeReward(RewardConfig(components={name: {"weight": 1.0}}))
        assert reward(["q", "q"], ["ab", "abcd"], ["", ""]) == [2.0, 4.0]
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        CompositeReward(RewardConfig(components={"nope": {"weight": 1.0}}))
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_length")(length_reward)


def test_pairwise_judge_verdicts_with_tie_margin():
    assert pairwise_verdicts([1.0, 1.02, 0.5], [0.9, 1.0, 1.0], tie_margin=0.05).tolist() == [1, 0, -1]
    judge = PairwiseJudge(lambda p, c, r, **k: [float(len(x)) for x in c], tie_margin=0.5)
    assert judge(["q"] * 3, ["abc", "a", "ab"], ["ab", "ab", "ab"]) == [1.0, -1.0, 0.0]
    assert torch.tensor(judge(["q"], ["same"], ["same"])).item() == 0.0  # R(y, y) = 0


def test_a_reward_reading_a_dataset_column_in_training_and_evaluation(tiny):
    """The ground truth ``answer`` reaches the reward, one value per scored completion,
    in the rollout (samples and the reference y) and in evaluation; the (here wrong)
    reference never stands in for it."""
    import datasets

    from grao_pipeline.alignment.config import EvalConfig
    from grao_pipeline.alignment.evaluation import answer_prompts, score_answers
    from grao_pipeline.alignment.methods.grao import GRAOMethodConfig
    from grao_pipeline.alignment.run import train_method

    seen = []

    def exact_answer(prompts, completions, references, answer, **columns):
        assert len(answer) == len(completions) and "reference" not in columns
        seen.append(list(answer))
        return [float(c.strip() == a) + 0.01 * len(c) for c, a in zip(completions, answer, strict=True)]

    register_reward("exact_answer_test", replace=True)(exact_answer)
    rewards = RewardConfig(components={"exact_answer_test": {"weight": 1.0}})
    rows = [{"prompt": f"What is {a} + {b}?", "reference": str(a + b + 1), "answer": str(a + b)}
            for a, b in ((2, 3), (4, 4), (1, 6), (5, 2))]
    cfg = GRAOMethodConfig(steps=2, prompts_per_step=2, num_generations=3, max_completion_tokens=4,
                     learning_rate=1e-3, mixed_precision="fp32", show_progress=False, temperature=1.0)
    _, log, _ = train_method("grao", tiny, rows, {"grao": cfg}, CompositeReward(rewards))
    assert len(log) == 2
    by_prompt = {r["prompt"]: r["answer"] for r in rows}
    sample_calls = [s for s in seen if len(s) == 6]
    reference_calls = [s for s in seen if len(s) == 2]
    assert len(sample_calls) == 2 and len(reference_calls) == 2
    for call in sample_calls:  # G = 3 consecutive copies of each prompt's answer
        assert call[0::3] == call[1::3] == call[2::3] and set(call) <= set(by_prompt.values())
    # y is wrong by one, so its reward is its length bonus only: it never matched
    assert all(row["reward/reference"] < 1.0 for row in log)

    test_set = datasets.Dataset.from_list(rows)
    answers = answer_prompts(tiny, test_set, EvalConfig(num_prompts=4, max_new_tokens=4,
                                                        batch_size=4, max_prompt_tokens=64))
    assert list(answers["answer"]) == [r["answer"] for r in rows]
    scored = score_answers(answers, rewards, "tiny")
    assert seen[-1] == [r["answer"] for r in rows]
    assert (scored["reference_reward"] < 1.0).all()


def test_the_finished_reward_reads_the_harness_column(tiny):
    from grao_pipeline.alignment.generation import Sampler
    from grao_pipeline.alignment.methods.base import rollout_and_score
    from grao_pipeline.alignment.methods.grao import GRAOMethodConfig
    from grao_pipeline.alignment.rewards import CompositeReward
    from grao_pipeline.alignment.rewards.builtin import finished_reward

    assert finished_reward(["q", "q"], ["a", "b"], ["y", "y"], finished=[True, False]) == [0.0, -1.0]
    reward = CompositeReward(RewardConfig(components={"finished": {"weight": 1.0}}))
    cfg = GRAOMethodConfig(prompts_per_step=2, num_generations=4, max_completion_tokens=3,
                     mixed_precision="fp32", show_progress=False)
    model, tok = tiny
    rollout = rollout_and_score(Sampler.around(model), tok, reward, [{"prompt": "hi?", "reference": "hello"},
                                                     {"prompt": "tea?", "reference": "yes"}], cfg)
    # a random tiny model rarely emits EOS within 3 tokens: samples are cut, and each cut
    # one scores -1
    assert rollout.sample_rewards.min().item() == -1.0
    assert (rollout.reference_rewards == 0.0).all()  # references are finished by definition
    assert rollout.metrics["frac_truncated"] == pytest.approx(-rollout.sample_rewards.mean().item())
