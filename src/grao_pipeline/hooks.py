"""Project hooks.

- ``ActiveParameters`` records the run's parameters (environment and ``--params``
  applied) before Kedro first builds the pipelines, so ``register_pipelines`` can
  generate ``compare``'s (method, seed) runs from the configuration in force.
- ``CheckedNames``: before any node runs, every top-level parameters section (from
  any environment, ``conf/local`` or ``--params``) must be one some pipeline reads, and
  every reward component must name a reward, even at weight 0 (the usual way to switch
  one off), so a misspelt name fails with the closest valid one instead of being
  ignored. A name the configuration itself reads with ``${runtime_params:<name>}``
  (``--params reference_error_rate=0.3``) is not a section and passes. Keys inside a section are checked by the section's config dataclass.
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
- ``NodeTimes``: each node's wall time, loading its inputs and saving its outputs
  included, logged when the run ends or fails, one line per node in the order they
  ran ("node answer_sft took 57.3 s"): where a run's time went, without a profiler
  (``benchmarks/workflows.py`` reads these lines).
"""

from __future__ import annotations

import difflib
import fcntl
import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import kedro.framework.project as project
from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

from grao_pipeline.alignment.rewards import registered_rewards

logger = logging.getLogger(__name__)
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
        _ACTIVE["runtime_reads"] = runtime_reads(Path(context.config_loader.conf_source))
        # PACKAGE_NAME is set once the project is configured, after this module loads.
        project.pipelines.configure(f"{project.PACKAGE_NAME}.pipeline_registry")


class ParameterNameError(ValueError):
    """A parameters section or reward component that nothing reads."""


def _closest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"


_RUNTIME_READ = re.compile(r"\$\{runtime_params:([A-Za-z_]\w*)")


def runtime_reads(conf_source: Path) -> set[str]:
    """Names the configuration reads with ``${runtime_params:<name>}`` (the verifiable
    env's ``reference_error_rate``): ``--params`` puts them among the parameters too,
    where no pipeline reads them, and they are not misspelt sections."""
    return {m for f in conf_source.rglob("*.yml") for m in _RUNTIME_READ.findall(f.read_text())}


def check_parameter_names(parameters: dict[str, Any], pipelines: dict,
                          runtime: set[str] = frozenset()) -> None:
    """Refuse a section that neither a pipeline nor the configuration (``runtime``:
    ``${runtime_params:...}``) reads, and a reward component that names no reward."""
    read = sorted({name[len("params:"):].split(".")[0] for p in pipelines.values()
                   for name in p.inputs() if name.startswith("params:")} | set(runtime))
    for section in parameters:
        if section not in read:
            raise ParameterNameError(
                f"parameters section {section!r} is read by no pipeline, so its values would be "
                f"ignored ({_closest(section, read)}). Check conf/local, the environment "
                "and --params")
    components = (parameters.get("rewards") or {}).get("components") or {}
    for name in components:
        if ":" not in name and name not in registered_rewards():
            raise ParameterNameError(
                f"rewards.components.{name}: no reward of that name ({_closest(name, registered_rewards())}); "
                "weight 0 switches a reward off, but only a reward that exists")


class CheckedNames:
    @hook_impl
    def before_pipeline_run(self) -> None:
        parameters = active_parameters()
        if parameters is not None:
            check_parameter_names(parameters, project.pipelines, _ACTIVE.get("runtime_reads", set()))


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


class NodeTimes:
    """A node's time runs from its first input load to its last output save."""

    def __init__(self):
        self.started: dict[str, float] = {}
        self.took: dict[str, float] = {}

    def _until_now(self, node) -> None:
        self.took[node.name] = time.perf_counter() - self.started[node.name]

    @hook_impl
    def before_pipeline_run(self) -> None:
        self.started.clear()
        self.took.clear()

    @hook_impl
    def before_dataset_loaded(self, node) -> None:
        self.started.setdefault(node.name, time.perf_counter())

    @hook_impl
    def before_node_run(self, node) -> None:
        self.started.setdefault(node.name, time.perf_counter())

    @hook_impl
    def after_node_run(self, node) -> None:
        self._until_now(node)

    @hook_impl
    def after_dataset_saved(self, node) -> None:
        if node is not None and node.name in self.started:
            self._until_now(node)

    @hook_impl
    def after_pipeline_run(self) -> None:
        for name, seconds in self.took.items():
            logger.info("node %s took %.1f s", name, seconds)

    @hook_impl
    def on_pipeline_error(self) -> None:
        self.after_pipeline_run()
