"""LoRA through peft: only the adapters train (and they do train: TRL#6700 was LoRA
silently training nothing), the start policy is the same model with its adapters
disabled, the adapter directory round-trips through the model dataset, a resumed
LoRA run equals an uninterrupted one, gradient checkpointing changes nothing but
memory."""

import pytest
import torch
from kedro.io import DatasetError

from grao_pipeline.alignment.config import ConfigError
from grao_pipeline.alignment.lora import AdaptersDisabled, has_adapters
from grao_pipeline.alignment.methods.base import start_policy_copy
from grao_pipeline.alignment.methods.grao import GRAOMethodConfig
from grao_pipeline.alignment.models import load_model
from grao_pipeline.alignment.run import train_method
from grao_pipeline.alignment.tokens import encode_prompts
from grao_pipeline.io import HFModelDataset
from tests.fixtures import tiny_model
from tests.helpers import length_reward

LORA = {"enabled": True, "rank": 4, "alpha": 8}
GRAO = dict(steps=2, prompts_per_step=2, num_generations=2, max_completion_tokens=6,
            learning_rate=1e-2, mixed_precision="fp32", show_progress=False, temperature=1.0,
            kl_coef=0.05, lora=LORA)


@pytest.fixture(scope="module")
def saved_base(tokenizer, tmp_path_factory):
    """A tiny model saved to a folder: adapters record their base by path."""
    path = tmp_path_factory.mktemp("lora") / "base"
    HFModelDataset(path=str(path)).save(tiny_model(tokenizer, seed=0))
    return path


@pytest.fixture(scope="module")
def trained(saved_base, rows_once):
    """One LoRA GRAO run (with a KL term, so the start policy is used), shared."""
    return grao(saved_base, rows_once)


@pytest.fixture(scope="module")
def rows_once():
    prompts = ["how are you?", "what is your dog called?", "do you like tea?", "where do you live?"]
    answers = ["great thanks!", "his name is Rex", "yes, green tea", "in a small town"]
    return [{"prompt": p, "reference": a} for p, a in zip(prompts, answers, strict=True)]


def logits(model, tok, text="how are you?"):
    enc = encode_prompts(tok, [text])
    with torch.no_grad():
        return model(input_ids=enc.ids, attention_mask=enc.mask).logits


def grao(saved_base, rows, layer_calls=None, **changes):
    start = load_model(saved_base)
    if layer_calls is not None:
        start.model.model.layers[0].self_attn.register_forward_hook(lambda *_: layer_calls.append(1))
    policy, log, title = train_method("grao", start, rows, {"grao": {**GRAO, **changes}},
                                      length_reward)
    return policy, log, title


def test_only_the_adapters_change_and_they_do(saved_base, trained):
    before = load_model(saved_base).model.state_dict()
    policy, log, title = trained
    assert has_adapters(policy.model) and "LoRA r=4" in title
    trained = {n: p for n, p in policy.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    base = policy.model.get_base_model().state_dict()
    for name, value in before.items():  # every original weight is bit-identical
        key = name if name in base else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(base[key], value), name
    lora_b = [p for n, p in trained.items() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in lora_b)  # B starts at 0: it moved
    assert all(r["grad_norm"] > 0 for r in log)
    assert not torch.equal(logits(policy.model, policy.tokenizer),
                           logits(load_model(saved_base).model, policy.tokenizer))


def test_the_start_policy_is_the_model_with_adapters_disabled(saved_base, trained):
    policy, _, _ = trained
    start = start_policy_copy(policy.model)
    assert isinstance(start, AdaptersDisabled) and start.model is policy.model  # no copy
    original = load_model(saved_base).model
    assert torch.equal(logits(start, policy.tokenizer), logits(original, policy.tokenizer))
    # and the adapters are back on afterwards
    assert not torch.equal(logits(policy.model, policy.tokenizer), logits(original, policy.tokenizer))


def test_adapters_round_trip_through_the_model_dataset(saved_base, trained, rows_once, tmp_path):
    policy, _, _ = trained
    HFModelDataset(path=str(tmp_path / "adapter")).save(policy)
    assert (tmp_path / "adapter/adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter/model.safetensors").exists()  # adapters only
    loaded = HFModelDataset(path=str(tmp_path / "adapter")).load()
    assert has_adapters(loaded.model)
    assert torch.equal(logits(loaded.model, loaded.tokenizer), logits(policy.model, policy.tokenizer))

    merged, _, _ = grao(saved_base, rows_once, lora={**LORA, "save_merged": True})
    assert not has_adapters(merged.model)
    HFModelDataset(path=str(tmp_path / "merged")).save(merged)
    plain = HFModelDataset(path=str(tmp_path / "merged")).load()
    torch.testing.assert_close(logits(plain.model, plain.tokenizer),
                               logits(policy.model, policy.tokenizer), atol=1e-5, rtol=1e-5)


def test_adapters_on_a_base_without_a_folder_are_refused_at_save(tokenizer, rows, tmp_path):
    policy, _, _ = train_method("grao", tiny_model(tokenizer, seed=0), rows, {"grao": GRAO},
                                length_reward)
    with pytest.raises(DatasetError, match="set lora.save_merged: true"):
        HFModelDataset(path=str(tmp_path / "adapter")).save(policy)


def test_a_resumed_lora_run_equals_an_uninterrupted_one(saved_base, rows, tmp_path):
    full, full_log, _ = grao(saved_base, rows, steps=4)
    checkpoints = dict(checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=2)
    grao(saved_base, rows, steps=2, **checkpoints)  # the "crash" after step 2
    resumed, resumed_log, _ = grao(saved_base, rows, steps=4, **checkpoints)
    assert [r["step"] for r in resumed_log] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed_log] == [r["loss"] for r in full_log]
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_gradient_checkpointing_changes_nothing_but_memory(saved_base, rows, tokenizer):
    plain_calls, checkpointed_calls = [], []
    # Generation on a copy of its own (as on a bf16 CPU), so the hook counts only the
    # policy's scoring and update forwards, on any CPU.
    copy = {"sampling_dtype": "bfloat16"}
    plain, plain_log, _ = grao(saved_base, rows, plain_calls, **copy)
    checkpointed, log, _ = grao(saved_base, rows, checkpointed_calls, gradient_checkpointing=True,
                                **copy)
    # The plain run computes each prompt once (two forwards per log-prob call); under
    # checkpointing a call is one whole-row forward, and the layer ran again in each
    # backward: activations were recomputed, not stored.
    assert len(checkpointed_calls) == len(plain_calls) // 2 + GRAO["steps"]
    # Sharing the prompt or not sums the same terms in another order: ~1e-5 apart.
    for a, b in zip(plain_log, log, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-7)
    # Adam turns those ~1e-5 relative gradient differences into parameter differences of
    # up to ~2e-4 of a step where two steps' gradients cancel (seen: a lora_B entry);
    # a checkpointing fault (a wrong recompute) would move parameters by a whole step.
    for p, q in zip(plain.model.parameters(), checkpointed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-3 * GRAO["learning_rate"], rtol=1e-5)
    dropout = tiny_model(tokenizer, seed=0)
    dropout.model.config.attention_dropout = 0.1
    with pytest.raises(ValueError, match="config.attention_dropout"):
        train_method("grao", dropout, rows, {"grao": {**GRAO, "lora": {}, "gradient_checkpointing": True}},
                     length_reward)


def test_lora_settings_are_validated():
    with pytest.raises(ConfigError, match="LoRAConfig.rank = 0"):
        GRAOMethodConfig(lora={"enabled": True, "rank": 0})
    with pytest.raises(ConfigError, match="unexpected keyword argument 'rnak'"):
        GRAOMethodConfig(lora={"rnak": 4})


def test_unknown_target_modules_are_named(saved_base, rows):
    with pytest.raises(ConfigError, match=r"\['c_attn'\] are not modules of LlamaForCausalLM"):
        grao(saved_base, rows, lora={**LORA, "target_modules": ["q_proj", "c_attn"]})


def test_adapters_are_refused_on_a_base_that_changed_since_they_were_saved(tokenizer, rows_once,
                                                                          tmp_path):
    """Issue 31, case 8: a rerun of sft replaced the base, and the old adapters were put
    on the new weights without a word."""
    base = tmp_path / "base"
    HFModelDataset(path=str(base)).save(tiny_model(tokenizer, seed=0))
    policy, _, _ = grao(base, rows_once[:2], steps=1)
    HFModelDataset(path=str(tmp_path / "adapter")).save(policy)
    assert has_adapters(HFModelDataset(path=str(tmp_path / "adapter")).load().model)
    HFModelDataset(path=str(base)).save(tiny_model(tokenizer, seed=1))  # sft rerun
    with pytest.raises(DatasetError, match=r"these LoRA adapters were trained on other weights "
                                           rf"than {base} holds now"):
        HFModelDataset(path=str(tmp_path / "adapter")).load()
