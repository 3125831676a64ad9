import pytest
import torch

from grao_pipeline.alignment.advantages import group_advantages
from grao_pipeline.alignment.logprobs import sequence_mean
from grao_pipeline.alignment.losses import grao_loss, k3_kl, sft_loss

BETA, LAM = 0.5, 0.6


def toy_batch():
    """2 prompts, G=2, T=2. ℓ(o) = [[-1, -2], [-0.5, -1.5]], ℓ(y) = [-3, -1]."""
    sample_logps = torch.tensor([[[-1.0, -1.0], [-2.0, -50.0]],
                                 [[-0.5, -0.5], [-1.0, -2.0]]], requires_grad=True)
    sample_mask = torch.tensor([[[1, 1], [1, 0]], [[1, 1], [1, 1]]])
    reference_logps = torch.tensor([[-2.0, -4.0], [-1.0, -9.0]], requires_grad=True)
    reference_mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([[1.0, -1.0], [0.5, -0.5]])
    reference_adv = torch.tensor([0.8, -0.2])
    return sample_logps, sample_mask, reference_logps, reference_mask, adv, reference_adv


def test_grao_loss_value_matches_hand_computation():
    loss, m = grao_loss(*toy_batch(), beta=BETA, lam=LAM)
    # prompt 0: expl (1·-1 + -1·-2)/2 = 0.5, imit .5·.8·-3 = -1.2, reg .6·(1·2 + -1·1)/2 = 0.3
    # prompt 1: expl (.5·-.5 + -.5·-1.5)/2 = .25, imit .5·-.2·-1 = .1, reg .6·(.25 + .25)/2 = .15
    assert m["loss/exploration"] == pytest.approx(-(0.5 + 0.25) / 2)
    assert m["loss/imitation"] == pytest.approx(-(-1.2 + 0.1) / 2)
    assert m["loss/regulariser"] == pytest.approx(-(0.3 + 0.15) / 2)
    assert loss.item() == pytest.approx(-0.375 + 0.55 - 0.225)
    assert m["share/exploration"] == pytest.approx(0.375 / 1.15)
    assert m["share/imitation"] == pytest.approx(0.55 / 1.15)
    assert m["share/regulariser"] == pytest.approx(0.225 / 1.15)


def test_grao_loss_gradient_matches_hand_computation():
    sample_logps, sample_mask, reference_logps, reference_mask, adv, reference_adv = toy_batch()
    loss, _ = grao_loss(sample_logps, sample_mask, reference_logps, reference_mask, adv, reference_adv,
                        beta=BETA, lam=LAM)
    loss.backward()
    # d loss / d logp(o_{b,i,t}) = -(1/B)(1/G)(1+λ)·Â_{b,i} / |o_{b,i}| on unmasked tokens
    c = -(1 / 2) * (1 / 2) * (1 + LAM)
    expected = torch.tensor([[[c * 1 / 2, c * 1 / 2], [c * -1 / 1, 0.0]],
                             [[c * 0.5 / 2, c * 0.5 / 2], [c * -0.5 / 2, c * -0.5 / 2]]])
    assert torch.allclose(sample_logps.grad, expected, atol=1e-7)
    # d loss / d logp(y_{b,t}) = -(1/B)(β·Â_y − λ·mean_i Â_i) / |y_b|; here mean_i Â_i = 0
    expected_reference = torch.tensor([[-(0.5) * BETA * 0.8 / 2] * 2, [-(0.5) * BETA * -0.2, 0.0]])
    assert torch.allclose(reference_logps.grad, expected_reference, atol=1e-7)


def test_regulariser_identity_with_reference_outside_statistics():
    """GRAO.md §2: y outside the statistics ⇒ mean_i Â_i = 0 ⇒ regulariser = λ·exploration,
    and the whole loss equals (1+λ)-scaled exploration plus imitation."""
    torch.manual_seed(0)
    b, g, t = 3, 4, 5
    sample_logps = -torch.rand(b, g, t) * 3
    mask = (torch.rand(b, g, t) > 0.2).long()
    mask[..., 0] = 1
    reference_logps, reference_mask = -torch.rand(b, t) * 3, torch.ones(b, t, dtype=torch.long)
    adv = group_advantages(torch.rand(b, g), torch.rand(b), include_reference=False)
    loss, m = grao_loss(sample_logps, mask, reference_logps, reference_mask, adv.samples, adv.reference,
                        beta=BETA, lam=LAM)
    assert m["loss/regulariser"] == pytest.approx(LAM * m["loss/exploration"], abs=1e-6)
    ell_o, ell_y = sequence_mean(sample_logps, mask), sequence_mean(reference_logps, reference_mask)
    by_hand = -((1 + LAM) * (adv.samples * ell_o).mean(1) + BETA * adv.reference * ell_y).mean()
    assert loss.item() == pytest.approx(by_hand.item(), abs=1e-6)

    # with y inside, the regulariser's y-part is −λ·ℓ(y)·mean_i(Â_i), no longer zero
    inside = group_advantages(torch.rand(b, g), torch.rand(b), include_reference=True)
    _, m_in = grao_loss(sample_logps, mask, reference_logps, reference_mask, inside.samples,
                        inside.reference, beta=BETA, lam=LAM)
    y_part = -(-LAM * ell_y * inside.samples.mean(1)).mean()
    assert m_in["loss/regulariser"] == pytest.approx(LAM * m_in["loss/exploration"] + y_part.item(), abs=1e-6)
    assert abs(y_part.item()) > 1e-3


def test_ablations_switch_terms_off():
    batch = toy_batch()
    _, no_explore = grao_loss(*batch, beta=BETA, lam=LAM, exploration=False)
    assert no_explore["loss/exploration"] == 0.0
    _, no_imitation = grao_loss(*batch, beta=0.0, lam=LAM)
    assert no_imitation["loss/imitation"] == 0.0
    _, no_reg = grao_loss(*batch, beta=BETA, lam=0.0)
    assert no_reg["loss/regulariser"] == 0.0


def test_no_imitation_gives_reference_zero_gradient():
    """grao_no_imitation takes y out of the objective: ℓ(y) gets no gradient even in an
    all-fail group, where β = 0 alone still pushes ℓ(y) up by λ·|Â_i|/G per member."""
    from grao_pipeline.alignment.methods import get_method
    from grao_pipeline.alignment.methods.grao import GRAOMethodConfig

    spec = get_method("grao_no_imitation")
    cfg = spec.config(GRAOMethodConfig())
    assert (cfg.beta, cfg.use_reference, cfg.include_reference_in_group) == (0.0, False, False)

    sample_logps, sample_mask, reference_logps, reference_mask, _, _ = toy_batch()
    # all samples fail, y succeeds
    sample_rewards, reference_rewards = torch.zeros(2, 2), torch.ones(2)
    for name, expect_pull in (("grao_beta_zero", True), ("grao_no_imitation", False)):
        c = get_method(name).config(GRAOMethodConfig())
        adv = group_advantages(sample_rewards + torch.tensor([[0.0, 0.1], [0.2, 0.0]]),
                               reference_rewards, c.include_reference_in_group)
        loss, m = grao_loss(sample_logps, sample_mask, reference_logps, reference_mask,
                            adv.samples, adv.reference, beta=c.beta, lam=c.lam,
                            use_reference=c.use_reference)
        (grad,) = torch.autograd.grad(loss, reference_logps, allow_unused=True)
        if expect_pull:
            assert grad is not None and grad.abs().sum().item() > 0, name
        else:  # y is not in the graph at all, not merely cancelled by mean_i Â_i = 0
            assert grad is None, name
        assert m["loss/imitation"] == 0.0
    # without y the regulariser is λ × exploration
    assert m["loss/regulariser"] == pytest.approx(c.lam * m["loss/exploration"], abs=1e-6)


def test_no_imitation_refuses_settings_that_would_still_use_y():
    from grao_pipeline.alignment.config import ConfigError
    from grao_pipeline.alignment.methods.grao import GRAOMethodConfig

    with pytest.raises(ConfigError, match="beta.*set beta: 0"):
        GRAOMethodConfig(use_reference=False, include_reference_in_group=False)
    with pytest.raises(ConfigError, match="include_reference_in_group: false"):
        GRAOMethodConfig(use_reference=False, beta=0.0)


def test_clipped_ratio_has_on_policy_gradient_at_ratio_one():
    sample_logps, sample_mask, reference_logps, reference_mask, adv, reference_adv = toy_batch()
    on_policy, _ = grao_loss(sample_logps, sample_mask, reference_logps, reference_mask, adv, reference_adv, BETA, LAM)
    (g_on,) = torch.autograd.grad(on_policy, sample_logps)
    clipped, _ = grao_loss(sample_logps, sample_mask, reference_logps, reference_mask, adv, reference_adv, BETA, LAM,
                           old_sample_logps=sample_logps.detach())
    (g_clip,) = torch.autograd.grad(clipped, sample_logps)
    assert torch.allclose(g_on, g_clip, atol=1e-7)
    # far outside the clip range with a positive advantage, the gradient vanishes
    clipped_far, _ = grao_loss(sample_logps, sample_mask, reference_logps, reference_mask, adv.abs(), reference_adv,
                               BETA, LAM, old_sample_logps=sample_logps.detach() - 1.0)
    (g_far,) = torch.autograd.grad(clipped_far, sample_logps)
    assert g_far.abs().max().item() == 0.0


def test_kl_penalty_adds_length_normalised_k3():
    batch = toy_batch()
    base, _ = grao_loss(*batch, beta=BETA, lam=LAM)
    kl_tokens = torch.full((2, 2, 2), 0.5)
    with_kl, m = grao_loss(*batch, beta=BETA, lam=LAM, kl_per_token=kl_tokens, kl_coef=0.1)
    assert m["kl_to_start"] == pytest.approx(0.5)
    assert with_kl.item() == pytest.approx(base.item() + 0.05, abs=1e-6)
    assert k3_kl(torch.tensor([-1.0]), torch.tensor([-1.0])).item() == 0.0
    assert k3_kl(torch.tensor([-1.0]), torch.tensor([-2.0])).item() == pytest.approx(
        torch.exp(torch.tensor(-1.0)).item())  # Δ = -1: e^-1 + 1 - 1


def test_length_normalisation_is_per_sequence():
    logps = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-4.0, -99.0, -99.0, -99.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert sequence_mean(logps, mask).tolist() == [-1.0, -4.0]
    loss, _ = sft_loss(logps, mask)
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)  # a token mean would give 8/5
