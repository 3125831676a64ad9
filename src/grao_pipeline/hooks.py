"""Project hooks.

- ``ActiveParameters`` records the run's parameters (environment and ``--params``
  applied) before Kedro first builds the pipelines, so ``register_pipelines`` can
  generate ``compare``'s (method, seed) runs from the configuration in force.
- ``MainProcessSaves``: under a multi-process launch (accelerate, torchrun) every rank
  runs the same nodes; only rank 0 writes persisted outputs, the other ranks keep
  their in-memory handoffs between nodes.
- ``RunLock``: one ``kedro run`` per data directory, so two runs never delete each
  other's checkpoints or interleave writes. A second run refuses, naming the holder.
  The lock is an ``flock`` on ``data/.kedro-run.lock``: the kernel releases it when
  its process dies, so a stale lock (SIGKILL, power loss) is taken over without a
  word. Optuna workers (``tuning``) are meant to run side by side: they share the
  lock with each other, and still exclude a training run. (flock does not work
  across machines on NFS; give each machine its own data directory.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import kedro.framework.project as project
from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

_ACTIVE: dict[str, Any] = {}


def active_parameters() -> dict[str, Any] | None:
    """The parameters of the session being run, or None outside one."""
    return _ACTIVE.get("parameters")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class ActiveParameters:
    @hook_impl
    def after_context_created(self, context) -> None:
        _ACTIVE["parameters"] = context.config_loader["parameters"]
        # PACKAGE_NAME is set once the project is configured, after this module loads.
        project.pipelines.configure(f"{project.PACKAGE_NAME}.pipeline_registry")


class MainProcessSaves:
    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        if is_main_process():
            return
        save = catalog.save

        def save_in_memory_only(name: str, data: Any) -> None:
            if name not in catalog or isinstance(catalog.get(name), MemoryDataset):
                save(name, data)

        catalog.save = save_in_memory_only


SHARED_PIPELINES = {"tuning"}
"""Pipelines whose runs may share a data directory with each other (Optuna workers)."""
LOCK_FILE = Path("data") / ".kedro-run.lock"


class RunLockError(RuntimeError):
    """Another ``kedro run`` holds this data directory."""


class RunLock:
    def __init__(self):
        self._file = None

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        if not is_main_process():
            return
        names = run_params.get("pipeline_names") or ["__default__"]
        shared = set(names) <= SHARED_PIPELINES
        path = Path(run_params["project_path"]) / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115  (held until the run ends)
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "(unknown)"
            handle.close()
            raise RunLockError(
                f"another kedro run is using {path.parent}: {holder}. Wait for it to finish, "
                "or run from a copy of the project with its own data/ directory") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "pipelines": names, "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "command": " ".join(sys.argv)}))
        handle.flush()
        self._file = handle

    def _release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._release()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._release()
