import json
import os
import re
import signal

import pytest
import torch

from grao_pipeline.alignment.checkpoints import CheckpointError
from grao_pipeline.alignment.config import ConfigError, DataConfig, EvalConfig, RewardConfig
from grao_pipeline.alignment.methods.grao import GRAOMethod, GRAOMethodConfig
from grao_pipeline.alignment.methods.sft import SFTConfig, SFTMethod
from grao_pipeline.alignment.run import NoSignalError, train_method
from grao_pipeline.alignment.trainer import StopTraining, TrainingInterrupted, train
from tests.fixtures import latest_checkpoint, tiny_model
from tests.helpers import length_reward


def grao_cfg(**overrides):
    base = dict(steps=1, prompts_per_step=2, num_generations=3, max_completion_tokens=6,
                learning_rate=1e-3, weight_decay=0.0, mixed_precision="fp32", show_progress=False,
                temperature=1.0)
    return GRAOMethodConfig(**{**base, **overrides})


def sft_cfg(**overrides):
    base = dict(steps=1, batch_size=4, learning_rate=1e-3, weight_decay=0.0, mixed_precision="fp32",
                show_progress=False)
    return SFTConfig(**{**base, **overrides})


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_every_parameter_changed(before, model):
    unchanged = [n for n, p in model.named_parameters() if torch.equal(before[n], p.detach())]
    assert not unchanged, f"parameters not updated: {unchanged}"


def test_one_sft_step_changes_every_parameter(tiny, rows):
    model, tok = tiny
    before = snapshot(model)
    result = train(model, SFTMethod(tok, sft_cfg()), rows, sft_cfg())
    assert len(result.log) == 1 and result.log[0]["loss"] > 0
    assert_every_parameter_changed(before, model)


def test_one_grao_step_changes_every_parameter(tiny, rows):
    model, tok = tiny
    before = snapshot(model)
    cfg = grao_cfg()
    result = train(model, GRAOMethod(tok, length_reward, cfg), rows, cfg)
    row = result.log[0]
    assert row["frac_reward_zero_std"] < 1.0 and row["grad_norm"] > 0
    for key in ("loss/exploration", "share/imitation", "time/generate", "time/score",
                "time/update", "tokens_per_sec", "completion_length", "frac_truncated"):
        assert key in row
    assert_every_parameter_changed(before, model)


def test_sft_loss_falls(tiny, rows):
    model, tok = tiny
    cfg = sft_cfg(steps=8, batch_size=6)
    log = train(model, SFTMethod(tok, cfg), rows, cfg).log
    assert log[-1]["loss"] < log[0]["loss"] - 0.5


@pytest.mark.parametrize("method", ["sft", "grao"])
def test_gradient_accumulation_gives_the_same_update(tokenizer, rows, method):
    results = []
    for chunks in (1, 2):
        model, tok = tiny_model(tokenizer, seed=0)
        if method == "sft":
            cfg = sft_cfg(grad_accum_chunks=chunks)
            m = SFTMethod(tok, cfg)
        else:
            cfg = grao_cfg(grad_accum_chunks=chunks)
            m = GRAOMethod(tok, length_reward, cfg)
        log = train(model, m, rows, cfg).log
        results.append(({n: p.grad.clone() for n, p in model.named_parameters()}, log[0]))
    (g1, log1), (g2, log2) = results
    assert log1["loss"] == pytest.approx(log2["loss"], abs=1e-6)
    assert log1["grad_norm"] == pytest.approx(log2["grad_norm"], rel=1e-5)
    # Compare the accumulated (clipped) gradients, not the weights after AdamW: Adam's
    # g/sqrt(v) turns round-off in near-zero gradient entries into lr-sized steps.
    for name in g1:
        assert torch.allclose(g1[name], g2[name], atol=1e-7, rtol=1e-4), name


def test_resume_from_checkpoint_repeats_the_uninterrupted_run(tokenizer, rows, tmp_path):
    def run(steps, ckpt_dir):
        model, tok = tiny_model(tokenizer, seed=0)
        cfg = grao_cfg(steps=steps, checkpoint_dir=str(ckpt_dir), checkpoint_every=2)
        return model, train(model, GRAOMethod(tok, length_reward, cfg), rows, cfg).log

    full_model, full_log = run(4, tmp_path / "full")
    run(2, tmp_path / "interrupted")  # "crashes" after its step-2 checkpoint
    # a half-written checkpoint from the crash must be ignored by resume
    (tmp_path / "interrupted" / ".tmp-step-000003-999").mkdir()
    assert latest_checkpoint(tmp_path / "interrupted").name == "step-000002"
    resumed_model, resumed_log = run(4, tmp_path / "interrupted")

    assert [r["step"] for r in resumed_log] == [1, 2, 3, 4]
    for a, b in zip(full_log, resumed_log, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["reward/mean"] == pytest.approx(b["reward/mean"], abs=1e-6)
    for (name, p), q in zip(full_model.named_parameters(), resumed_model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
    state = json.loads((latest_checkpoint(tmp_path / "full") / "trainer_state.json").read_text())
    assert state["step"] == 4
    assert any(p.suffix == ".safetensors" for p in latest_checkpoint(tmp_path / "full").rglob("*"))


@pytest.mark.parametrize("overrides, message", [
    ({"num_generations": 1}, "num_generations = 1: G must be >= 2"),
    ({"beta": -0.1}, "beta = -0.1: must be >= 0"),
    ({"lam": -1.0}, "lam = -1.0: must be >= 0"),
    ({"temperature": 0.0}, "temperature = 0.0: must be > 0"),
    ({"learning_rate": 0.0}, "learning_rate = 0.0: must be > 0"),
    ({"prompts_per_step": 3, "grad_accum_chunks": 2}, "must divide prompts_per_step (a chunk holds whole prompts)"),
    ({"checkpoint_every": 5}, "checkpoint_dir = None: is required"),
    ({"epochs_per_rollout": 0}, "epochs_per_rollout = 0: must be >= 1"),
    # types are checked before ranges, and strictly
    ({"exploration": "flase"}, "exploration = 'flase': must be bool, not str"),
    ({"num_generations": 2.5}, "num_generations = 2.5: must be int, not float"),
    ({"num_generations": "abc"}, "num_generations = 'abc': must be int, not str"),
    ({"beta": True}, "beta = True: must be float, not bool"),
    ({"mixed_precision": "no"}, "mixed_precision = 'no': must be one of 'auto', 'bf16', 'fp32'"),
    ({"checkpoint_dir": 3}, "checkpoint_dir = 3: must be"),
])
def test_invalid_parameters_are_refused_with_the_field_named(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        grao_cfg(**overrides)


@pytest.mark.parametrize("make, message", [
    (lambda: RewardConfig(components={"relevance": {"weight": "high"}}),
     "components.relevance.weight = 'high': must be a number"),
    (lambda: RewardConfig(components={"relevance": 1.0}), "components.relevance = 1.0: must be a mapping"),
    (lambda: RewardConfig(components={"relevance": {"weight": 0}, "positivity": {"weight": 0.0}}),
     "every weight is 0"),
    (lambda: EvalConfig(do_sample="yes"), "do_sample = 'yes': must be bool"),
    (lambda: DataConfig(validation_fraction="0.1"), "validation_fraction = '0.1': must be float"),
])
def test_other_configs_check_types_and_values_too(make, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()


class NaNMethod(SFTMethod):
    def loss(self, model, batch):
        loss, metrics = super().loss(model, batch)
        return loss * float("nan"), metrics


def test_non_finite_loss_stops_before_the_update_and_keeps_checkpoints(tokenizer, rows, tmp_path):
    model, tok = tiny_model(tokenizer, seed=0)
    cfg = sft_cfg(steps=2, checkpoint_dir=str(tmp_path), checkpoint_every=1)
    train(model, SFTMethod(tok, cfg), rows, cfg)
    saved = sorted(p.name for p in tmp_path.iterdir())
    before = snapshot(model)
    resumed, _ = tiny_model(tokenizer, seed=0)  # the same starting weights: resumes at step 2
    nan_cfg = sft_cfg(steps=3, checkpoint_dir=str(tmp_path), checkpoint_every=1)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 3"):
        train(resumed, NaNMethod(tok, nan_cfg), rows, nan_cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == saved
    for name, p in resumed.named_parameters():
        assert torch.equal(before[name], p.detach())


def test_callbacks_see_every_step_and_can_stop_early(tiny, rows):
    model, tok = tiny
    seen = []

    def stop_after_two(step, row):
        seen.append((step, row["loss"]))
        if step == 2:
            raise StopTraining

    cfg = sft_cfg(steps=5)
    log = train(model, SFTMethod(tok, cfg), rows, cfg, callbacks=[stop_after_two]).log
    assert [s for s, _ in seen] == [1, 2] and len(log) == 2


def test_several_epochs_per_rollout_and_kl_penalty_run(tiny, rows):
    model, tok = tiny
    cfg = grao_cfg(epochs_per_rollout=2, kl_coef=0.1)
    row = train(model, GRAOMethod(tok, length_reward, cfg), rows, cfg).log[0]
    # The policy moves during the 2 epochs, so the k3 KL to the start policy must be > 0.
    assert row["kl_to_start"] > 0.0 and torch.isfinite(torch.tensor(row["loss"]))


def sft_run(model, tok, rows, tmp_path, **overrides):
    cfg = sft_cfg(**{"checkpoint_dir": str(tmp_path), "checkpoint_every": 1, **overrides})
    return train(model, SFTMethod(tok, cfg), rows, cfg).log


def previous_runs(tmp_path):
    return sorted(p for p in tmp_path.iterdir() if p.name.startswith("previous-"))


def test_a_changed_config_starts_over_and_keeps_the_old_checkpoints(tiny, rows, tmp_path, caplog):
    model, tok = tiny
    sft_run(model, tok, rows, tmp_path, steps=1)
    model2, _ = tiny_model(tok, seed=0)
    with caplog.at_level("WARNING"):
        log = sft_run(model2, tok, rows, tmp_path, steps=2, learning_rate=5e-4)
    assert [r["step"] for r in log] == [1, 2]  # started over
    assert "learning_rate changed (0.001 -> 0.0005)" in caplog.text
    [aside] = previous_runs(tmp_path)
    assert [p.name for p in aside.iterdir()] == ["step-000001"]
    # more steps alone is a legitimate continuation
    model3, _ = tiny_model(tok, seed=0)
    log = sft_run(model3, tok, rows, tmp_path, steps=3, learning_rate=5e-4)
    assert [r["step"] for r in log] == [1, 2, 3] and len(previous_runs(tmp_path)) == 1


def test_other_starting_weights_or_data_start_over(tiny, rows, tmp_path, caplog):
    model, tok = tiny
    sft_run(model, tok, rows, tmp_path, steps=2)
    swapped, _ = tiny_model(tok, seed=1)  # "the base model was swapped"
    with caplog.at_level("WARNING"):
        log = sft_run(swapped, tok, rows, tmp_path, steps=2)
    assert "the starting weights differ" in caplog.text and len(log) == 2
    fresh, _ = tiny_model(tok, seed=1)
    with caplog.at_level("WARNING"):
        sft_run(fresh, tok, rows[:-1], tmp_path, steps=2)
    assert "the training rows differ" in caplog.text
    assert len(previous_runs(tmp_path)) == 2


def test_another_reward_config_starts_over(tiny, rows, tmp_path, caplog):
    model, tok = tiny
    cfg = sft_cfg(steps=1, checkpoint_dir=str(tmp_path), checkpoint_every=1)
    train(model, SFTMethod(tok, cfg), rows, cfg, context={"rewards": {"judge": 1.0}})
    fresh, _ = tiny_model(tok, seed=0)
    with caplog.at_level("WARNING"):
        train(fresh, SFTMethod(tok, cfg), rows, cfg, context={"rewards": {"relevance": 1.0}})
    assert "the reward and other settings differ" in caplog.text


def test_resuming_the_same_run_returns_the_finished_model_without_training(tiny, rows, tmp_path):
    model, tok = tiny
    sft_run(model, tok, rows, tmp_path, steps=2)
    again, _ = tiny_model(tok, seed=0)
    log = sft_run(again, tok, rows, tmp_path, steps=2)
    assert [r["step"] for r in log] == [1, 2]
    for (name, p), q in zip(model.named_parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_a_checkpoint_past_the_requested_steps_is_refused(tiny, rows, tmp_path):
    model, tok = tiny
    sft_run(model, tok, rows, tmp_path, steps=2)
    fresh, _ = tiny_model(tok, seed=0)
    with pytest.raises(CheckpointError, match=r"step-000002 is at step 2, past steps=1"):
        sft_run(fresh, tok, rows, tmp_path, steps=1)


@pytest.mark.parametrize("damage, reason", [
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:100]),
     "model.safetensors: 100 bytes"),
    (lambda f: (f / "trainer_state.json").write_text("{"), "trainer_state.json: unreadable"),
    (lambda f: (f / "optimizer.bin").unlink(), "optimizer.bin: missing"),
])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tokenizer, rows, tmp_path, caplog,
                                                                    damage, reason):
    full, tok = tiny_model(tokenizer, seed=0)
    sft_run(full, tok, rows, tmp_path / "full", steps=3)
    model, _ = tiny_model(tok, seed=0)
    sft_run(model, tok, rows, tmp_path / "run", steps=2)
    damage(tmp_path / "run" / "step-000002")
    (tmp_path / "run" / ".tmp-step-000003").mkdir()  # a kill mid-write leaves this
    resumed, _ = tiny_model(tok, seed=0)
    with caplog.at_level("WARNING"):
        log = sft_run(resumed, tok, rows, tmp_path / "run", steps=3)
    assert reason in caplog.text and "trying the previous one" in caplog.text
    assert [r["step"] for r in log] == [1, 2, 3]
    for (name, p), q in zip(full.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert ".tmp-step-000003" not in names and any(n.startswith("corrupt-step-000002") for n in names)


def test_resume_off_moves_old_checkpoints_aside(tiny, rows, tmp_path):
    model, tok = tiny
    sft_run(model, tok, rows, tmp_path, steps=3, checkpoints_to_keep=3)
    assert latest_checkpoint(tmp_path).name == "step-000003"
    sft_run(model, tok, rows, tmp_path, steps=1, resume=False)
    [aside] = previous_runs(tmp_path)
    assert sorted(p.name for p in aside.iterdir()) == ["step-000001", "step-000002", "step-000003"]
    assert latest_checkpoint(tmp_path).name == "step-000001"


def test_non_finite_gradient_names_the_parameter(tiny, rows):
    model, tok = tiny
    cfg = sft_cfg()
    model.model.norm.weight.register_hook(lambda g: g * float("inf"))
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at step 1 in model\.norm\.weight"):
        train(model, SFTMethod(tok, cfg), rows, cfg)


def test_sigterm_finishes_the_step_saves_a_checkpoint_and_stops(tiny, rows, tmp_path):
    model, tok = tiny

    def terminate_at_two(step, row):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = sft_cfg(steps=5, checkpoint_dir=str(tmp_path), checkpoint_every=10)
    # callbacks run within the step, before its checkpoint: a signal sent from step 2's
    # callback ends the run after step 2
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM after step 2 of 5; checkpoint saved"):
        train(model, SFTMethod(tok, cfg), rows, cfg, callbacks=[terminate_at_two])
    assert latest_checkpoint(tmp_path).name == "step-000002"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def constant_reward(prompts, completions, references, **columns):
    return [1.0] * len(completions)


@pytest.mark.parametrize("method", ["grao", "grpo"])
def test_a_reward_that_cannot_teach_is_flagged_once_naming_it(tokenizer, rows, method, caplog):
    """Issue 31, case 3: a constant reward trained every step at loss 0 without a word."""
    cfg = dict(steps=4, prompts_per_step=2, num_generations=2, max_completion_tokens=4,
               mixed_precision="fp32", show_progress=False, no_signal_steps=2)
    _, log, _ = train_method(method, tiny_model(tokenizer, seed=0), rows, {method: cfg},
                             constant_reward)
    assert [row["frac_reward_zero_std"] for row in log] == [1.0] * 4
    warnings = [r.getMessage() for r in caplog.records if "nothing is learnt" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{method}: reward constant_reward gave every group equal "
                                  "rewards for 2 steps in a row (zero-variance share 1.00, steps 1-2)")
    with pytest.raises(NoSignalError, match="stop_without_signal: true"):
        train_method(method, tiny_model(tokenizer, seed=0), rows,
                     {method: {**cfg, "stop_without_signal": True}}, constant_reward)


def test_a_reward_with_signal_is_not_flagged(tokenizer, rows, caplog):
    cfg = dict(steps=3, prompts_per_step=2, num_generations=2, max_completion_tokens=4,
               mixed_precision="fp32", show_progress=False, no_signal_steps=1, temperature=1.0)
    train_method("grao", tiny_model(tokenizer, seed=0), rows, {"grao": cfg}, length_reward)
    assert "nothing is learnt" not in caplog.text
