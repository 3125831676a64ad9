"""``GRAOTrainer`` (TRL 1.16's GRPOTrainer + y in the group + our loss) against our own
GRAO step: with generation replaced by the same fixed completions (TRL's ``rollout_func``
hook), one step gives the same loss and gradients within 1e-6. Then a real TRL run with
its own generation trains."""

import datasets
import pytest
import torch

from grao_pipeline.alignment.generation.sampling import Samples
from grao_pipeline.alignment.methods.grao import GRAOMethod
from grao_pipeline.alignment.methods.grao import GRAOMethodConfig as OurGRAOConfig
from grao_pipeline.alignment.models import load_model, save_model
from grao_pipeline.alignment.tokens import completion_mask, encode_completions, encode_prompts
from grao_pipeline.integrations.trl import GRAOConfig, GRAOTrainer
from tests.fixtures import tiny_model

# equal token lengths under the chat template: TRL's forward does not shift positions
# for left padding, ours does; with no padding both agree
ROWS = [{"prompt": "how are you today?", "reference": "great, thanks"},
        {"prompt": "do you like tea?", "reference": "no"}]
SAMPLES = {"how are you today?": ["fine", "not bad at all"], "do you like tea?": ["yes I do", "no"]}
G, MAX_TOKENS, BETA, LAM, KL = 2, 8, 0.5, 0.6, 0.05


def length_reward(prompts, completions, references, **columns):
    return [float(len(c)) for c in completions]


def trl_length_reward(prompts, completions, **kwargs):
    """The same reward, in TRL's signature (conversational completions)."""
    return [float(len(c[0]["content"])) for c in completions]


def fixed_samples(model, tokenizer, encoded, prompts, num_generations, max_new_tokens, temperature):
    texts = [t for p in prompts for t in SAMPLES[p]]
    ids, _ = encode_completions(tokenizer, texts, max_new_tokens, tokenizer.eos_token_id)
    return Samples(ids, completion_mask(ids, [tokenizer.eos_token_id]), texts,
                   torch.zeros(len(texts), dtype=torch.bool))


def our_step(tokenizer):
    model, tok = tiny_model(tokenizer, seed=0)
    cfg = OurGRAOConfig(num_generations=G, prompts_per_step=2, max_completion_tokens=MAX_TOKENS,
                        beta=BETA, lam=LAM, kl_coef=KL, mixed_precision="fp32", show_progress=False)
    method = GRAOMethod(tok, length_reward, cfg)
    method.sample_fn = fixed_samples
    method.setup(model)
    batch, metrics = method.prepare(model, ROWS)
    loss, _ = method.loss(model, batch)
    loss.backward()
    return loss, {n: p.grad for n, p in model.named_parameters()}, metrics


def trl_trainer(tokenizer, tmp_path, rollout_func=None, **changes):
    # TRL reads files of the model's folder: give it one
    save_model(tiny_model(tokenizer, seed=0), tmp_path / "tiny")
    model, tok = load_model(tmp_path / "tiny")
    dataset = datasets.Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "reference": r["reference"]} for r in ROWS])
    args = GRAOConfig(**{
        "output_dir": str(tmp_path), "per_device_train_batch_size": len(ROWS) * G,
        "num_generations": G, "max_completion_length": MAX_TOKENS, "grao_beta": BETA,
        "grao_lambda": LAM, "beta": KL, "use_cpu": True, "bf16": False, "report_to": [],
        "save_strategy": "no", "logging_steps": 1, "max_steps": 1, "learning_rate": 1e-2, **changes})
    return GRAOTrainer(model=model, reward_funcs=[trl_length_reward], args=args,
                       train_dataset=dataset, processing_class=tok, rollout_func=rollout_func)


def test_one_step_matches_our_grao_step(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    ours, our_grads, our_metrics = our_step(tokenizer)

    def rollout(prompts, trainer):
        texts = [m[-1]["content"] for m in prompts]
        encoded = encode_prompts(trainer.processing_class, texts)
        assert bool(encoded.mask.all())  # no padding: see ROWS
        seen = {}
        completions = []
        for text in texts:
            k = seen[text] = seen.get(text, -1) + 1
            ids, _ = encode_completions(trainer.processing_class, [SAMPLES[text][k]], MAX_TOKENS,
                                        trainer.processing_class.eos_token_id)
            completions.append(ids[0].tolist())
        return {"prompt_ids": encoded.ids.tolist(), "completion_ids": completions,
                "logprobs": [[0.0] * len(c) for c in completions]}

    trainer = trl_trainer(tokenizer, tmp_path, rollout)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._generate_and_score_completions([dict(r) for r in trainer.train_dataset
                                                      for _ in range(G)])
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    assert loss.item() == pytest.approx(ours.item(), abs=1e-6)
    # Ours runs each prompt once for its G members (rollout.shared_prompt_token_logps),
    # TRL whole rows: the same sums in another order, ~2e-6 apart in the embedding's.
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p.grad, our_grads[name], atol=5e-6, rtol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")
    logged = trainer._metrics["train"]
    assert logged["grao/reward_reference"][-1] == pytest.approx(our_metrics["reward/reference"])
    assert logged["grao/frac_reference_advantage_negative"][-1] == pytest.approx(
        our_metrics["frac_reference_advantage_negative"])
    assert logged["grao/loss/imitation"][-1] != 0.0


def test_a_real_trl_run_trains(tokenizer, tmp_path):
    trainer = trl_trainer(tokenizer, tmp_path, max_steps=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    assert any("grao/loss/imitation" in row for row in trainer.state.log_history)


def test_bad_settings_are_named(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="num_iterations = 2"):
        GRAOConfig(output_dir=str(tmp_path), num_iterations=2, use_cpu=True, report_to=[])
    trainer = trl_trainer(tokenizer, tmp_path, reference_column="answer")
    with pytest.raises(KeyError, match="no 'answer' column"):
        trainer.train()
