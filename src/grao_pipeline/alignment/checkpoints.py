"""Checkpoints you can trust: written atomically, verified before use, resumed only when
the run is the same run.

A checkpoint is a folder ``step-NNNNNN`` under the run's ``checkpoint_dir``: accelerate's
state (model, optimiser, scheduler, RNG, safetensors) plus ``trainer_state.json`` with the
step, the log so far, the config, the *fingerprints* of the starting weights, of the
training rows and of the run context, and a manifest of every file's size.

- Written into ``.tmp-step-NNNNNN`` and renamed into place, so a kill mid-write leaves
  only a temporary folder, which the next start deletes.
- Resume picks the newest checkpoint that verifies (manifest sizes match, every
  safetensors header parses). A newest one that does not is moved aside to
  ``corrupt-step-NNNNNN-<time>`` and the previous one is used, with a warning.
- Resume happens only when config (bar ``RESUMABLE_CHANGES``), starting weights,
  data and the run context (the reward config) all match. Otherwise the old checkpoints are moved aside to
  ``previous-<time>/`` (never deleted) and training starts over, logging why.
  ``resume: false`` moves them aside the same way.
- A checkpoint past the requested ``steps`` is refused: silently returning a longer
  run's model is a wrong result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors import safe_open

from grao_pipeline.alignment.config import TrainConfig

STATE_FILE = "trainer_state.json"
_STEP_RE = re.compile(r"^step-(\d{6})$")
RESUMABLE_CHANGES = {"steps", "resume", "show_progress", "checkpoint_every", "checkpoints_to_keep",
                     "gradient_checkpointing"}
"""Config fields that may change between a run and its resumption."""
logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed as asked; the message names it and the fix."""


def weights_fingerprint(modules: Iterable[torch.nn.Module]) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            t = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(t.view(torch.uint8).numpy())  # a buffer: no copy
    return digest.hexdigest()


def value_fingerprint(value: Any) -> str:
    """SHA-256 of a JSON-able value (keys sorted; a dataclass by its fields): rows,
    settings, configs."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def rows_fingerprint(rows: list[dict]) -> str:
    """SHA-256 of the training rows, in order, every column included."""
    return value_fingerprint(rows)


def step_folders(checkpoint_dir: str | Path | None) -> list[Path]:
    """Checkpoint folders, oldest first (temporary and moved-aside folders never match)."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return []
    return sorted(p for p in Path(checkpoint_dir).iterdir() if p.is_dir() and _STEP_RE.match(p.name))


def _manifest(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != STATE_FILE}


def verify(folder: Path) -> dict:
    """The checkpoint's trainer state, or CheckpointError naming the file that is wrong."""
    state_path = folder / STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{state_path}: unreadable ({err})") from err
    for key in ("step", "log", "config", "fingerprints", "manifest"):
        if key not in state:
            raise CheckpointError(f"{state_path}: no {key!r} (written by an older version?)")
    for name, size in state["manifest"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        if path.stat().st_size != size:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, {size} expected (truncated?)")
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except Exception as err:  # safetensors raises its own SafetensorError
                raise CheckpointError(f"{path}: not a valid safetensors file ({err})") from err
    return state


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000_000:09d}"


def clean_temporary(checkpoint_dir: str | Path | None) -> None:
    """Delete half-written checkpoints a killed run left behind."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return
    for tmp in Path(checkpoint_dir).glob(".tmp-step-*"):
        logger.info("removing the unfinished checkpoint %s", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def move_aside(checkpoint_dir: str | Path, why: str) -> Path | None:
    """Move every checkpoint into ``previous-<time>/``; returns that folder."""
    folders = step_folders(checkpoint_dir)
    if not folders:
        return None
    target = Path(checkpoint_dir) / f"previous-{_stamp()}"
    target.mkdir()
    for folder in folders:
        os.replace(folder, target / folder.name)
    logger.warning("not resuming from %s: %s; its checkpoints were moved to %s and training "
                   "starts over", checkpoint_dir, why, target)
    return target


def _differences(saved: dict, cfg: TrainConfig, fingerprints: dict[str, str]) -> list[str]:
    current = dataclasses.asdict(cfg)
    why = [f"{k} changed ({saved['config'].get(k)!r} -> {current.get(k)!r})"
           for k in sorted(set(saved["config"]) | set(current))
           if k not in RESUMABLE_CHANGES and saved["config"].get(k) != current.get(k)]
    why += [f"the {what} differ" for what, value in fingerprints.items()
            if saved["fingerprints"].get(what) != value]
    return why


def find_resumable(cfg: TrainConfig, fingerprints: dict[str, str]) -> tuple[Path, dict] | None:
    """The checkpoint to resume ``cfg``'s run from, or None to start over.

    Main process only (it moves folders). Fingerprints: {"starting weights": ...,
    "training rows": ...} of this run, compared with the checkpoint's.
    """
    root = cfg.checkpoint_dir
    # Created even when no checkpoint is due: it is a declared DVC output of the stage.
    Path(root).mkdir(parents=True, exist_ok=True)
    clean_temporary(root)
    if not cfg.resume:
        move_aside(root, "resume is off") if root else None
        return None
    for folder in reversed(step_folders(root)):
        try:
            state = verify(folder)
        except CheckpointError as err:
            aside = folder.with_name(f"corrupt-{folder.name}-{_stamp()}")
            os.replace(folder, aside)
            logger.warning("checkpoint %s is unusable (%s); moved to %s, trying the previous one",
                           folder, err, aside)
            continue
        why = _differences(state, cfg, fingerprints)
        if why:
            move_aside(root, "; ".join(why))
            return None
        if state["step"] > cfg.steps:
            raise CheckpointError(
                f"{folder} is at step {state['step']}, past steps={cfg.steps}: resuming would "
                f"return a longer run's model. Set steps >= {state['step']}, or resume: false "
                "to start over (the old checkpoints are kept in previous-<time>/)")
        return folder, state
    return None


def write_state(folder: Path, step: int, log: list[dict], cfg: TrainConfig,
                fingerprints: dict[str, str]) -> None:
    """The trainer state, written last: a folder without it never verifies."""
    state = {"step": step, "log": log, "config": dataclasses.asdict(cfg),
             "fingerprints": fingerprints, "manifest": _manifest(folder)}
    (folder / STATE_FILE).write_text(json.dumps(state))


def rotate(checkpoint_dir: Path, keep: int) -> None:
    for old in step_folders(checkpoint_dir)[:-keep]:
        shutil.rmtree(old)


def save(accelerator: Accelerator, cfg: TrainConfig, step: int, log: list[dict],
                     fingerprints: dict[str, str]) -> Path:
    """Every rank writes its part into one temporary folder; the main process then
    writes the trainer state, renames the folder into place and rotates old ones."""
    root = Path(cfg.checkpoint_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_state(tmp, step, log, cfg, fingerprints)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        rotate(root, cfg.checkpoints_to_keep)
    accelerator.wait_for_everyone()
    return final


def resume_point(accelerator: Accelerator, cfg: TrainConfig,
                  fingerprints: dict[str, str]) -> tuple[Path, dict] | None:
    """The main process chooses (it may move folders aside); every rank gets its answer,
    or its error, so no rank waits forever on one that raised."""
    found: list = [None]
    if accelerator.is_main_process:
        try:
            found = [find_resumable(cfg, fingerprints)]
        except CheckpointError as err:
            found = [err]
    if accelerator.num_processes > 1:
        broadcast_object_list(found)
    if isinstance(found[0], Exception):
        raise found[0]
    return found[0]

