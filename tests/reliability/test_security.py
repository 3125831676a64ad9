"""Loading an artefact never runs someone else's code: safetensors only, torch.load only
with weights_only=True, no remote code unless asked, telemetry off in the project."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import BertConfig, BertModel

from grao_pipeline.alignment.methods.sft import SFTConfig, SFTMethod
from grao_pipeline.alignment.rewards.builtin import SentenceEmbedder
from grao_pipeline.alignment.trainer import train
from tests.fixtures import tiny_model


def test_resume_unpickles_nothing_but_weights(tokenizer, rows, tmp_path, monkeypatch):
    def run():
        model, tok = tiny_model(tokenizer, seed=0)
        cfg = SFTConfig(steps=2, batch_size=2, mixed_precision="fp32", show_progress=False,
                        checkpoint_dir=str(tmp_path), checkpoint_every=1)
        train(model, SFTMethod(tok, cfg), rows, cfg)

    run()
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    run()  # resumes from step 2: optimiser, scheduler and RNG states are read back
    assert calls and all(w is True for w in calls), calls


def test_the_embedder_refuses_pickle_weights(tmp_path):
    encoder = BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=32))
    encoder.config.save_pretrained(tmp_path)
    torch.save(encoder.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        SentenceEmbedder(str(tmp_path))


def test_kedro_telemetry_is_off_in_the_project_itself():
    env = {k: v for k, v in os.environ.items() if k not in ("KEDRO_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    code = "import grao_pipeline.settings, os; print(os.environ['KEDRO_DISABLE_TELEMETRY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "true"
