import numpy as np
import pytest
import torch

from grao_pipeline.alignment.metrics import bootstrap_ci, per_prompt_metrics, sequence_kl
from grao_pipeline.alignment.tokens import encode_completions, encode_prompts
from tests.fixtures import tiny_model


def test_bootstrap_of_a_constant_is_a_point():
    ci = bootstrap_ci([0.25] * 10)
    assert ci == {"value": 0.25, "ci_low": 0.25, "ci_high": 0.25}


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = bootstrap_ci(rng.normal(1, 1, 50)), bootstrap_ci(rng.normal(1, 1, 5000))
    for ci in (small, large):
        assert ci["ci_low"] < ci["value"] < ci["ci_high"]
    assert (large["ci_high"] - large["ci_low"]) < (small["ci_high"] - small["ci_low"]) / 5
    # normal theory: half-width ≈ 1.96·σ/√n = 0.0277 for n = 5000
    assert (large["ci_high"] - large["ci_low"]) / 2 == pytest.approx(0.0277, rel=0.15)


def test_win_tie_loss_ras_and_nag_on_known_verdicts():
    m = per_prompt_metrics(rewards=[1, 2, 3, 4], verdicts_vs_reference=[1, 1, 0, -1],
                           verdicts_vs_start=[-1, -1, -1, 1], kl=[0, 0, 0, 0], lengths=[1, 2, 3, 4])
    assert m["ras"].mean() == 0.5 and m["tie_vs_reference"].mean() == 0.25
    assert m["loss_vs_reference"].mean() == 0.25
    assert m["nag"].mean() == 0.25 and m["net_win_vs_start"].mean() == -0.5
    assert m["mean_reward"].mean() == 2.5 and m["response_length"].mean() == 2.5


def test_sequence_kl_is_zero_for_the_same_model_and_positive_otherwise(tokenizer):
    a, b = tiny_model(tokenizer, seed=0).model, tiny_model(tokenizer, seed=1).model
    enc = encode_prompts(tokenizer, ["hi", "how are you"])
    ids, mask = encode_completions(tokenizer, ["fine", "good thanks"], 5, tokenizer.eos_token_id)
    assert torch.allclose(sequence_kl(a, a, enc, ids, mask), torch.zeros(2), atol=1e-6)
    assert (sequence_kl(a, b, enc, ids, mask) > 0).all()


def test_sequence_kl_equals_a_per_row_unpadded_computation(tokenizer):
    """Against an independent computation: each row alone (no padding, full logits),
    Σ over completion tokens of Σ_v p(v)·(log p(v) − log q(v))."""
    a, b = tiny_model(tokenizer, seed=0).model, tiny_model(tokenizer, seed=1).model
    prompts, answers = ["hi", "how are you today"], ["fine", "good thanks, you?"]
    enc = encode_prompts(tokenizer, prompts)
    ids, mask = encode_completions(tokenizer, answers, 8, tokenizer.eos_token_id)
    batched = sequence_kl(a, b, enc, ids, mask)
    for i in range(2):
        p_ids = enc.ids[i][enc.mask[i].bool()]
        c_ids = ids[i][mask[i].bool()]
        full = torch.cat([p_ids, c_ids]).unsqueeze(0)
        with torch.no_grad():
            lp = torch.log_softmax(a(full).logits[0].double(), -1)[len(p_ids) - 1:-1]
            lq = torch.log_softmax(b(full).logits[0].double(), -1)[len(p_ids) - 1:-1]
        expected = (lp.exp() * (lp - lq)).sum()
        assert batched[i].item() == pytest.approx(expected.item(), rel=1e-4)


def test_steps_to_reach_reports_no_gain_instead_of_a_fast_step():
    from grao_pipeline.alignment.metrics import steps_to_reach

    assert steps_to_reach([0, 0, 0, 1, 1, 1], fraction=0.9, window=1) == 4
    assert steps_to_reach([0.0, 0.5, 1.0, 1.0], fraction=0.5, window=1) == 2
    assert np.isnan(steps_to_reach([1.0, 0.8, 0.5, 0.2], window=1))  # falling: never "fast"
    assert np.isnan(steps_to_reach([0.3] * 5, window=3))  # flat


def test_length_matched_and_the_length_controlled_win_rate_by_hand():
    from grao_pipeline.alignment.metrics import length_matched, two_level_bootstrap_ci

    # reference 20 tokens: ±4 matches; reference 5 tokens: ±3 (the floor) matches
    matched = length_matched([24, 25, 8, 9, 20], [20, 20, 5, 5, 20])
    assert matched.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    wins = [1.0, 1.0, 0.0, 1.0, 1.0]  # the long answers win: raw RAS 0.8
    raw = bootstrap_ci(wins, 200)
    controlled = bootstrap_ci(wins, 200, weights=matched)
    assert raw["value"] == pytest.approx(0.8)
    assert controlled["value"] == pytest.approx(2 / 3)  # wins among the matched only
    assert 0.0 <= controlled["ci_low"] <= controlled["value"] <= controlled["ci_high"] <= 1.0
    two = two_level_bootstrap_ci([wins, wins], 200, weights=[matched, matched])
    assert two["value"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no values with positive weight"):
        bootstrap_ci(wins, 200, weights=[0.0] * 5)


def test_paired_difference_matches_hand_computation():
    """One seed, two problems, differences (1, 0): a resample draws each problem with
    probability 1/2, so its mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4. The
    2.5% and 97.5% quantiles are therefore 0 and 1; the mean is 0.5; 0 is inside."""
    from grao_pipeline.alignment.metrics import paired_difference

    d = paired_difference([[1.0, 0.0]], [[0.0, 0.0]], resamples=4000)
    assert (d["value"], d["ci_low"], d["ci_high"], d["verdict"]) == (0.5, 0.0, 1.0, "no difference")
    # the same at the seed level: two seeds, one problem each
    d = paired_difference([[3.0], [2.0]], [[2.0], [2.0]], resamples=4000)
    assert (d["value"], d["ci_low"], d["ci_high"]) == (0.5, 0.0, 1.0)
    # every difference positive: no resample can average 0 or less
    d = paired_difference([[2.0, 3.0], [4.0, 5.0]], [[1.0, 1.0], [1.0, 1.0]])
    assert d["value"] == 2.5 and d["ci_low"] >= 1.0 and d["verdict"] == "win"
    assert paired_difference([[0.0, 1.0]], [[1.0, 2.0]])["verdict"] == "loss"
    with pytest.raises(ValueError, match="same seeds and problems"):
        paired_difference([[1.0, 0.0]], [[1.0, 0.0, 1.0]])


def test_pairing_separates_what_marginal_intervals_cannot():
    """a beats b by 0.1 on every problem, while the problems differ far more than that:
    the marginal intervals overlap, the paired difference is a clear win."""
    from grao_pipeline.alignment.metrics import paired_difference, two_level_bootstrap_ci

    difficulty = np.random.default_rng(0).uniform(0, 1, size=(3, 20))
    a, b = difficulty + 0.1, difficulty
    ia, ib = two_level_bootstrap_ci(a), two_level_bootstrap_ci(b)
    assert ia["ci_low"] < ib["ci_high"]  # marginal intervals overlap
    d = paired_difference(a, b)
    assert d["verdict"] == "win" and d["ci_low"] == pytest.approx(0.1)
