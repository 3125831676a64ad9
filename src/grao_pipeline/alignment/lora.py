"""LoRA through ``peft``: which weights train, and what the frozen start policy is.

- ``with_adapters`` wraps the policy in a ``PeftModel`` (seeded, so a resumed run
  builds the same initial adapters and its fingerprint matches); only the adapters
  then require gradients, so the trainer's optimiser holds nothing else.
- The start policy of a LoRA run (KL penalties, DPO) is ``AdaptersDisabled``: the
  same module with its adapters switched off for the call, not a deep copy. It equals
  the model training began from exactly, because peft initialises B = 0.
- ``finished`` merges the adapters into the weights when ``save_merged`` is set;
  otherwise the policy stays a ``PeftModel`` and saves as an adapter directory
  (adapter_config.json + adapter_model.safetensors, the base recorded by path).
"""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from grao_pipeline.alignment.config import ConfigError, LoRAConfig


def has_adapters(model: torch.nn.Module) -> bool:
    return isinstance(model, PeftModel)


def with_adapters(model: torch.nn.Module, cfg: LoRAConfig, seed: int, phase: str) -> torch.nn.Module:
    """``model`` with fresh LoRA adapters if ``cfg.enabled``; a model that already has
    them (an earlier phase of a recipe) keeps training them. A phase with LoRA off on a
    model with adapters is refused: it would silently train only the adapters."""
    if has_adapters(model):
        if not cfg.enabled:
            raise ConfigError(f"{phase}: lora.enabled is false, but the model carries LoRA "
                              "adapters from an earlier phase; enable lora in every phase")
        return model
    if not cfg.enabled:
        return model
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in names]
    if missing:
        raise ConfigError(f"{phase}: lora.target_modules {missing} are not modules of "
                          f"{type(model).__name__}")
    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules), task_type="CAUSAL_LM"))


def finished(model: torch.nn.Module, cfg: LoRAConfig) -> torch.nn.Module:
    """The policy to save: adapters merged into a plain model if ``save_merged``."""
    if has_adapters(model) and cfg.save_merged:
        return model.merge_and_unload()
    return model


class AdaptersDisabled(torch.nn.Module):
    """The policy with its LoRA adapters switched off: the frozen start policy without
    a second copy of the weights. Callers already run it without gradients."""

    def __init__(self, model: PeftModel):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)

    def get_input_embeddings(self):
        """The input embedding lookup, with the adapters off too (LoRA may target the
        embedding)."""
        def embed(ids: torch.Tensor) -> torch.Tensor:
            with self.model.disable_adapter():
                return self.model.get_input_embeddings()(ids)
        return embed
