"""Mixture-of-experts policies: the router's load-balancing loss and expert usage.

Any HF causal LM whose config has ``router_aux_loss_coef`` (Mixtral, Qwen2-MoE,
Qwen3-MoE, OLMoE, …) is a MoE policy. Around each loss computation ``RouterLoss``
asks the model for its router logits, takes the auxiliary load-balancing loss that HF
computes from them (unscaled), adds ``coef ×`` it to the method's loss, and counts the
tokens each expert was routed (top-k, padding excluded, summed over layers), so a
collapse onto few experts shows in the training curves. Generation and no-grad
forwards are untouched. For a dense model it does nothing.

Simplification: the aux loss of a loss computation is the mean over the forwards in
it (one for every method here).
"""

from __future__ import annotations

import torch


def is_moe(model: torch.nn.Module) -> bool:
    return hasattr(getattr(model, "config", None), "router_aux_loss_coef")


def _experts(config) -> tuple[int, int]:
    num = next(getattr(config, k) for k in ("num_local_experts", "num_experts", "n_routed_experts")
               if getattr(config, k, None))
    return num, int(config.num_experts_per_tok)


class RouterLoss:
    """Context manager around one loss computation with gradients; see the module doc."""

    def __init__(self, model: torch.nn.Module, coef: float | None):
        self.model = model
        self.active = is_moe(model)
        self.coef = (coef if coef is not None else float(model.config.router_aux_loss_coef)
                     ) if self.active else 0.0
        self.aux: list[torch.Tensor] = []
        self.counts: torch.Tensor | None = None

    def __enter__(self) -> RouterLoss:
        if self.active:
            self._previous = self.model.config.output_router_logits
            self.model.config.output_router_logits = True
            self._hook = self.model.register_forward_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            self._hook.remove()
            self.model.config.output_router_logits = self._previous

    def _record(self, module, args, kwargs, output) -> None:
        if not torch.is_grad_enabled() or getattr(output, "aux_loss", None) is None:
            return
        self.aux.append(output.aux_loss)
        num_experts, top_k = _experts(self.model.config)
        mask = kwargs.get("attention_mask")
        keep = mask.reshape(-1).bool() if mask is not None else None
        counts = torch.zeros(num_experts, dtype=torch.long)
        for layer_logits in output.router_logits:
            chosen = layer_logits.detach().topk(top_k, dim=-1).indices.cpu()
            if keep is not None:
                chosen = chosen[keep.cpu()]
            counts += torch.bincount(chosen.reshape(-1), minlength=num_experts)
        self.counts = counts if self.counts is None else self.counts + counts

    def add_to(self, loss: torch.Tensor, metrics: dict) -> tuple[torch.Tensor, dict]:
        """``loss + coef · aux_loss`` and the router metrics; unchanged for a dense model."""
        if not self.aux:
            return loss, metrics
        aux_loss = torch.stack(self.aux).mean()
        shares = self.counts.double() / self.counts.sum().clamp(min=1)
        total = loss + self.coef * aux_loss
        return total, {
            **metrics, "loss": total.item(), "moe/method_loss": loss.item(),
            "moe/aux_loss": aux_loss.item(), "moe/aux_coef": self.coef,
            "moe/max_expert_share": shares.max().item(),
            **{f"moe/expert_tokens/{i}": int(c) for i, c in enumerate(self.counts)}}
