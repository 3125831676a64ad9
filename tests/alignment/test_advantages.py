import math

import pytest
import torch

from grao_pipeline.alignment.advantages import group_advantages

EPS = 1e-4


def test_reference_inside_group_hand_computed():
    # group {1, 2, 3, y=4}: mean 2.5, population std sqrt(1.25)
    adv = group_advantages(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([4.0]), True, EPS)
    std = math.sqrt(1.25)
    expected = [(r - 2.5) / (std + EPS) for r in (1.0, 2.0, 3.0)]
    assert adv.samples[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert adv.reference.item() == pytest.approx(1.5 / (std + EPS), rel=1e-6)
    assert not adv.zero_std.item()


def test_reference_outside_group_hand_computed():
    # samples {1, 2, 3}: mean 2, population std sqrt(2/3); y = 4 measured against them
    adv = group_advantages(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([4.0]), False, EPS)
    std = math.sqrt(2 / 3)
    assert adv.samples[0].tolist() == pytest.approx([-1 / (std + EPS), 0.0, 1 / (std + EPS)], rel=1e-6)
    assert adv.reference.item() == pytest.approx(2.0 / (std + EPS), rel=1e-6)
    assert adv.samples.mean().item() == pytest.approx(0.0, abs=1e-7)


def test_zero_variance_groups_get_zero_and_are_counted():
    samples = torch.tensor([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    refs = torch.tensor([2.0, 1.0, 0.0])
    adv = group_advantages(samples, refs, include_reference=True, eps=EPS)
    assert adv.zero_std.tolist() == [True, False, False]
    assert adv.frac_reward_zero_std == pytest.approx(1 / 3)
    assert adv.samples[0].tolist() == [0.0, 0.0, 0.0] and adv.reference[0].item() == 0.0
    # all samples failed but y succeeded: with y in the group, y still has signal
    assert adv.reference[1].item() > 0 and (adv.samples[1] < 0).all()
    # with y outside, the same group has zero sample variance: everything is 0
    outside = group_advantages(samples, refs, include_reference=False, eps=EPS)
    assert outside.zero_std.tolist() == [True, True, False]
    assert outside.reference[1].item() == 0.0
