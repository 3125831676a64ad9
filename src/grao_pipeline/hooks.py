"""Project hooks.

- ``ActiveParameters`` records the run's parameters (environment and ``--params``
  applied) before Kedro first builds the pipelines, so ``register_pipelines`` can
  generate ``compare``'s (method, seed) runs from the configuration in force.
- ``MainProcessSaves``: under a multi-process launch (accelerate, torchrun) every rank
  runs the same nodes; only rank 0 writes persisted outputs, the other ranks keep
  their in-memory handoffs between nodes.
"""

from __future__ import annotations

import os
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
