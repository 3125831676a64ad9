import copy

import pytest
import torch
from kedro.io import DatasetError

from grao_pipeline.alignment.models import import_smollm2
from grao_pipeline.io import HFModelDataset


def test_model_dataset_round_trip(tiny, tmp_path):
    model, tok = tiny
    ds = HFModelDataset(path=str(tmp_path / "policy"))
    assert not ds.exists()
    ds.save(tiny)
    files = {p.name for p in (tmp_path / "policy").iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert not any(f.endswith((".bin", ".pkl", ".pt")) for f in files)
    loaded_model, loaded_tok = ds.load()
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model(ids).logits, loaded_model(ids).logits)
    assert loaded_tok.eos_token == tok.eos_token and loaded_tok.chat_template == tok.chat_template
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]  # no temp folders left


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no model directory at"):
        HFModelDataset(path=str(tmp_path / "nothing")).load()


@pytest.mark.slow
def test_gguf_import_gives_a_plain_trainable_savable_model(tmp_path):
    bundle = import_smollm2()
    assert getattr(bundle.model.config, "quantization_config", None) is None
    assert bundle.tokenizer.eos_token == "<|im_end|>"
    assert bundle.tokenizer.pad_token_id == bundle.tokenizer.eos_token_id
    ds = HFModelDataset(path=str(tmp_path / "smollm2"))
    ds.save(bundle)
    reloaded, _ = ds.load()
    ids = torch.tensor([[1, 504, 3459, 28]])
    assert torch.allclose(bundle.model(ids).logits, reloaded(ids).logits)


def test_hub_ids_go_through_source_and_paths_stay_local(tmp_path):
    with pytest.raises(DatasetError, match="exactly one of 'path'"):
        HFModelDataset(path=str(tmp_path), source="HuggingFaceTB/SmolLM2-360M-Instruct")
    with pytest.raises(DatasetError, match="read-only"):
        HFModelDataset(source="HuggingFaceTB/SmolLM2-360M-Instruct").save("a model")
    with pytest.raises(DatasetError, match="trust_remote_code = 'yes'"):
        HFModelDataset(path=str(tmp_path), trust_remote_code="yes")


def test_a_tokenizer_loaded_again_is_a_copy_until_its_folder_changes(tiny, tmp_path, monkeypatch):
    """The second load of an unchanged folder builds nothing (a copy of the first, which
    the caller may change freely); a changed tokenizer file is loaded afresh."""
    from transformers import AutoTokenizer

    from grao_pipeline.alignment import models
    from grao_pipeline.alignment.models import ModelAndTokenizer

    HFModelDataset(path=str(tmp_path / "m")).save(tiny)
    first = models.load_tokenizer(str(tmp_path / "m"))
    built = []
    real = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: built.append(a) or real(*a, **k))
    again = models.load_tokenizer(str(tmp_path / "m"))
    assert built == [] and again is not first
    assert again("hello there")["input_ids"] == first("hello there")["input_ids"]
    again.chat_template = "changed"  # a copy: the next load is not affected
    assert models.load_tokenizer(str(tmp_path / "m")).chat_template == first.chat_template

    changed = copy.deepcopy(tiny.tokenizer)  # the session's tokenizer stays as it is
    changed.chat_template = "{{ messages[0]['content'] }}"
    HFModelDataset(path=str(tmp_path / "m")).save(ModelAndTokenizer(tiny.model, changed))
    assert models.load_tokenizer(str(tmp_path / "m")).chat_template == "{{ messages[0]['content'] }}"
    assert len(built) == 1
