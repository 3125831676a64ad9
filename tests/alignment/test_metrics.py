import numpy as np
import pytest
import torch

from grao_pipeline.alignment.metrics import bootstrap_ci, per_prompt_metrics, sequence_kl
from grao_pipeline.alignment.models import tiny_model
from grao_pipeline.alignment.rollout import encode_completions, encode_prompts


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
