"""The one training loop. Every method (SFT, GRAO, the baselines) runs through ``train``.

A step: pick the step's rows → ``method.prepare`` (rollout, rewards, advantages; no
grad) → for each update epoch: accumulate ``method.loss`` over chunks of whole prompts,
clip the gradient norm, AdamW step → ``method.after_update`` (re-sync the sampler) →
log, callbacks, checkpoint.

Simplifications and choices, stated once:
- The model stays in eval mode: no dropout, so the sampled and trained distributions
  are the same policy (SmolLM2 has no dropout anyway). With gradient checkpointing the
  update runs in train mode (HF checkpoints only there), so a model with dropout is
  refused.
- bf16 autocast is ours (``mixed_precision``), around prepare and loss alike, so the
  old log-probs and the loss's see the same arithmetic; accelerate's would also cast
  the logits to a float32 copy. On a CPU the policy attends with
  ``attention.cpu_attention`` for the run (faster one-token decoding; SDPA otherwise).
- Mixture-of-experts policies (moe.py) add the router's load-balancing loss to every
  method's loss, and log it with the tokens each expert received.
- Data order and sampling are functions of (seed, step) only: step k reseeds torch and
  draws rows from the epoch-(k·n // N) permutation. A run resumed from a checkpoint at
  step k therefore repeats the uninterrupted run exactly; checkpoints hold model,
  optimiser, scheduler, RNG states, the step and the log so far.
- Checkpoints (checkpoints.py) are atomic, verified before use, and resumed only
  when config, starting weights, training rows and the run context (the reward
  config) all match; otherwise the old ones are moved aside, never deleted.
- A non-finite loss or gradient stops training with an error naming the step (and
  the parameter) before the optimiser step, so the last checkpoint stays a good one.
- SIGINT/SIGTERM finish the current step, save a checkpoint and stop with
  ``TrainingInterrupted``; rerunning the same command resumes.
- Multi-process (accelerate DDP): each rank takes a disjoint slice of the step's
  prompts, so a prompt's group is always sampled, scored and normalised on one rank.
  Rollouts run on the unwrapped model; the loss runs on the DDP wrapper, which
  averages gradients over ranks. Batches are moved to the accelerator's device.
  Logged metrics are reduced over ranks (counts summed, times maxed, the rest
  averaged: every rank holds the same number of prompts), so every rank logs the
  same row. Checkpoints are written by every rank into one folder (accelerate saves
  per-rank RNG states) and renamed into place by the main process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm

from grao_pipeline.alignment import checkpoints
from grao_pipeline.alignment.attention import cpu_attention_in
from grao_pipeline.alignment.config import TrainConfig
from grao_pipeline.alignment.hardware import mixed_precision
from grao_pipeline.alignment.moe import RouterLoss

logger = logging.getLogger(__name__)


class StopTraining(Exception):
    """Raised by a callback to end training early and keep what was learnt."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM: the step finished, a checkpoint (if configured) was saved."""


class Method(Protocol):
    """What one method adds to the shared loop."""

    name: str
    rows_per_step: int
    updates_per_batch: int
    reads_reference: bool
    """Whether the loss trains on the rows' reference answers y: each such row counts as
    one demonstration in the step log (``demonstrations``), so a comparison shows who
    imitated how much."""
    extra_modules: list[torch.nn.Module]
    """Trained alongside the policy (e.g. PPO's value head): optimised, clipped,
    checkpointed; the trainer replaces them with their accelerate-prepared versions."""

    def training_rows(self, model: torch.nn.Module, rows: list[dict]) -> tuple[list[dict], dict]:
        """The rows to train on (e.g. DPO's preference pairs) and a report of their making."""

    def setup(self, model: torch.nn.Module) -> None:
        """Build helpers that need the (unwrapped) model: a sampling copy, the frozen
        start policy."""

    def prepare(self, model: torch.nn.Module, rows: list[dict]) -> tuple[object, dict]:
        """Turn rows into a batch dataclass (tensors with a leading prompt dim), plus
        metrics of its making (rewards, timings). Gets the unwrapped model; runs
        without gradients."""

    def loss(self, model: torch.nn.Module, batch: object) -> tuple[torch.Tensor, dict]:
        """Scalar loss of (a chunk of) a batch, and its metrics."""

    def after_update(self, model: torch.nn.Module) -> None:
        """Called after each optimiser step, with the unwrapped model."""


@dataclass
class TrainResult:
    model: torch.nn.Module
    log: list[dict]
    made_of: dict
    """What produced the model: method, config, and the fingerprints that resume checks."""


def make_accelerator() -> Accelerator:
    # AcceleratorState is a process singleton; a new config needs a fresh state.
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=not torch.cuda.is_available())


def refuse_dropout(model: torch.nn.Module) -> None:
    """Gradient checkpointing needs train mode, which would switch dropout on and make the
    trained policy differ from the sampled one: refuse a model that has any."""
    active = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    config = getattr(model, "config", None)
    active += [f"config.{k}" for k in ("attention_dropout", "hidden_dropout", "dropout",
                                       "resid_pdrop", "attn_pdrop", "embd_pdrop")
               if isinstance(getattr(config, k, None), float) and getattr(config, k) > 0]
    if active:
        raise ValueError(f"gradient_checkpointing needs a model without dropout; "
                         f"{type(model).__name__} has {', '.join(active[:5])}")


def step_row_indices(num_rows: int, rows_per_step: int, step: int, seed: int) -> list[int]:
    """Rows of step ``step``: consecutive slices of seeded per-epoch permutations."""
    start = step * rows_per_step
    indices: list[int] = []
    while len(indices) < rows_per_step:
        epoch, offset = divmod(start + len(indices), num_rows)
        perm = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices.extend(perm[offset: offset + rows_per_step - len(indices)].tolist())
    return indices


def split_batch(batch: object, chunks: int) -> list[tuple[object, int]]:
    """Split a batch dataclass along its leading prompt dimension into ``chunks`` parts.

    Every tensor field is sliced on dim 0 (None fields pass through). Returns
    (chunk, number of prompts in it).
    """
    tensors = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)
               if isinstance(getattr(batch, f.name), torch.Tensor)}
    n = next(iter(tensors.values())).shape[0]
    if chunks == 1:
        return [(batch, n)]
    bounds = [round(i * n / chunks) for i in range(chunks + 1)]
    return [(dataclasses.replace(batch, **{k: v[a:b] for k, v in tensors.items()}), b - a)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _weighted_mean(parts: list[tuple[dict, int]]) -> dict:
    total = sum(n for _, n in parts)
    keys = parts[0][0].keys()
    return {k: sum(m[k] * n for m, n in parts) / total for k in keys}


class _StopSignals:
    """Turns SIGINT/SIGTERM into a flag read at the step boundary; a second signal
    interrupts at once. Only the main thread may install handlers."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now")
        self.received = signal.Signals(signum).name
        logger.warning("%s received: finishing this step, then saving a checkpoint", self.received)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _any_rank(accelerator: Accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item())


def _non_finite_gradients(named: list[tuple[str, torch.nn.Parameter]]) -> list[str]:
    return [n for n, p in named if p.grad is not None and not torch.isfinite(p.grad).all()]


def to_device(batch: object, device: torch.device) -> object:
    """The batch dataclass with every tensor field on ``device``."""
    return dataclasses.replace(batch, **{
        f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)})


_SUMMED = ("samples", "tokens", "demonstrations")


def reduce_metrics(accelerator: Accelerator, row: dict) -> dict:
    """One log row for the whole step: counts summed over ranks, times maxed (the
    slowest rank sets the pace), everything else averaged."""
    if accelerator.num_processes == 1:
        return row
    keys = sorted(k for k, v in row.items() if isinstance(v, int | float))
    values = torch.tensor([float(row[k]) for k in keys], dtype=torch.float64,
                          device=accelerator.device)
    gathered = accelerator.gather(values.unsqueeze(0)).view(accelerator.num_processes, -1).cpu()
    out = dict(row)
    for i, k in enumerate(keys):
        column = gathered[:, i]
        out[k] = float(column.sum() if k in _SUMMED else
                       column.max() if k.startswith("time/") else column.mean())
    return out


def _one_step(accelerator: Accelerator, model: torch.nn.Module, policy: torch.nn.Module,
              method: Method, rows: list[dict], cfg: TrainConfig, step: int,
              trainable: list[torch.nn.Parameter], named: list[tuple[str, torch.nn.Parameter]],
              optimizer, scheduler) -> dict:
    """Rollout (or batch), the update epochs, the after-update re-sync; the step's log row."""
    t_step = time.perf_counter()
    torch.manual_seed(cfg.seed * 1_000_003 + step)
    indices = step_row_indices(len(rows), method.rows_per_step, step, cfg.seed)
    rank_indices = indices[accelerator.process_index::accelerator.num_processes]
    with mixed_precision(cfg.mixed_precision, accelerator.device):
        batch, row = method.prepare(policy, [rows[i] for i in rank_indices])
    row["demonstrations"] = len(rank_indices) if method.reads_reference else 0
    batch = to_device(batch, accelerator.device)

    t_update = time.perf_counter()
    # HF checkpoints layers only in train mode; with no dropout (checked) that is all it changes.
    policy.train(cfg.gradient_checkpointing)
    for _ in range(method.updates_per_batch):
        optimizer.zero_grad(set_to_none=True)
        parts = split_batch(batch, cfg.grad_accum_chunks)
        total = sum(n for _, n in parts)
        chunk_metrics = []
        for i, (chunk, n) in enumerate(parts):
            sync = accelerator.no_sync(model) if i < len(parts) - 1 else contextlib.nullcontext()
            with sync, RouterLoss(policy, cfg.router_aux_loss_coef) as router:
                with mixed_precision(cfg.mixed_precision, accelerator.device):
                    loss, metrics = router.add_to(*method.loss(model, chunk))
                # Every rank must agree before the collective backward.
                bad_ranks = accelerator.reduce(
                    (~torch.isfinite(loss.detach())).float().reshape(1), "sum")
                if bad_ranks.item() > 0:
                    raise FloatingPointError(
                        f"{method.name}: non-finite loss at step {step + 1}: {metrics}")
                accelerator.backward(loss * (n / total))
            chunk_metrics.append((metrics, n))
        grad_norm = float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm))
        if not math.isfinite(grad_norm):
            bad = _non_finite_gradients(named)
            raise FloatingPointError(
                f"{method.name}: non-finite gradient at step {step + 1} in "
                f"{', '.join(bad[:5]) or 'another rank'}{' …' if len(bad) > 5 else ''}; "
                "the optimiser step was skipped and the last checkpoint is intact")
        optimizer.step()
        scheduler.step()
    policy.eval()
    method.after_update(policy)

    now = time.perf_counter()
    row.update(_weighted_mean(chunk_metrics))
    row.update({"step": step + 1, "updates": method.updates_per_batch, "grad_norm": grad_norm,
                "lr": scheduler.get_last_lr()[0],
                "time/update": now - t_update, "time/step": now - t_step})
    row = reduce_metrics(accelerator, row)
    if "tokens" in row:
        row["tokens_per_sec"] = row["tokens"] / row["time/step"]
    return row


def train(model: torch.nn.Module, method: Method, rows: list[dict], cfg: TrainConfig,
          callbacks: Sequence[Callable[[int, dict], None]] = (),
          context: Mapping[str, Any] | None = None) -> TrainResult:
    """Train ``model`` in place with ``method`` for ``cfg.steps`` optimiser steps.

    ``callbacks`` get (step, log row) after each step; one may raise ``StopTraining``
    (or e.g. ``optuna.TrialPruned``, which propagates) to end early. ``context``: what
    else the run depends on (the reward config): a checkpoint is resumed only if it
    matches, like config, starting weights and rows.
    """
    if not rows:
        raise ValueError("no training rows")
    accelerator = make_accelerator()
    if method.rows_per_step % accelerator.num_processes:
        raise ValueError(f"{method.rows_per_step} prompts per step cannot be split evenly "
                         f"over {accelerator.num_processes} processes")
    model.eval()
    if cfg.gradient_checkpointing:
        refuse_dropout(model)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    extra = list(method.extra_modules)
    trainable = [p for m in (model, *extra) for p in m.parameters() if p.requires_grad]
    # fused: one kernel over all parameters; measured 0.49 s -> 0.07 s per step on 135M
    # parameters on a 2-core CPU (docs/perf-log.md).
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  fused=True)
    warmup = cfg.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0)
    model, *extra, optimizer, scheduler = accelerator.prepare(model, *extra, optimizer, scheduler)
    method.extra_modules = extra

    policy = accelerator.unwrap_model(model)  # generation and no-grad forwards use it
    # Every forward of the run (and the copies made below) uses the CPU attention
    # where it applies; the model leaves train() with its own setting.
    with cpu_attention_in(policy, accelerator.device):
        # Before any checkpoint is loaded: the frozen start policy (KL, DPO) must be the
        # policy training began from, not the resumed one; the fingerprints likewise.
        method.setup(policy)
        fingerprints = {"starting weights": checkpoints.weights_fingerprint(
                            [accelerator.unwrap_model(m) for m in (model, *extra)]),
                        "training rows": checkpoints.rows_fingerprint(rows),
                        "reward and other settings": checkpoints.rows_fingerprint([dict(context or {})])}
        start_step, history = 0, []
        found = checkpoints.resume_point(accelerator, cfg, fingerprints) if cfg.checkpoint_dir else None
        if found is not None:
            checkpoint, state = found
            accelerator.load_state(str(checkpoint))
            method.after_update(policy)  # re-sync a sampling copy with the loaded weights
            start_step, history = state["step"], state["log"]
            logger.info("%s: resumed from %s", method.name, checkpoint)
        named = [(n, p) for m in (model, *extra) for n, p in accelerator.unwrap_model(m).named_parameters()
                 if p.requires_grad]

        progress = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps,
                        desc=method.name, dynamic_ncols=True,
                        disable=not cfg.show_progress or not accelerator.is_local_main_process)
        try:
            with _StopSignals() as stop:
                for step in progress:
                    history.append(_one_step(accelerator, model, policy, method, rows, cfg, step,
                                             trainable, named, optimizer, scheduler))
                    row = history[-1]
                    progress.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "reward/mean") if k in row})
                    # before the checkpoint: what a callback adds to the row (the
                    # over-optimisation curve) is saved with it, so a resumed log equals
                    # an uninterrupted one
                    for callback in callbacks:
                        callback(step + 1, row)
                    interrupted = _any_rank(accelerator, stop.received is not None)
                    last = step + 1 == cfg.steps
                    if cfg.checkpoint_dir and (interrupted or (cfg.checkpoint_every and (
                            (step + 1) % cfg.checkpoint_every == 0 or last))):
                        saved = checkpoints.save(accelerator, cfg, step + 1, history, fingerprints)
                    if interrupted:
                        where = (f"checkpoint saved at {saved}; rerun the same command to resume"
                                 if cfg.checkpoint_dir else "no checkpoint_dir is set, so nothing was saved")
                        raise TrainingInterrupted(
                            f"{method.name}: stopped by {stop.received or 'a signal on another rank'} "
                            f"after step {step + 1} of {cfg.steps}; {where}")
        except StopTraining:
            pass
        finally:
            progress.close()
        made_of = {"method": method.name, "steps": len(history),
                   "config": dataclasses.asdict(cfg), **fingerprints}
        return TrainResult(policy, history, made_of)

