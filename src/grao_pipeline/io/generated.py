"""Read-only datasets the project generates itself (seeded, nothing downloaded)."""

from __future__ import annotations

from typing import Any

import datasets
from kedro.io import AbstractDataset, DatasetError

from grao_pipeline.alignment.rewards.verifiable import arithmetic_problems


class ArithmeticDataset(AbstractDataset[None, datasets.Dataset]):
    """Addition problems with ``answer``, ``reference`` and ``reference_is_wrong`` columns
    (see ``alignment.verifiable``); read them with ``data_processing.format: columns``."""

    def __init__(self, num_rows: int = 2000, digits: int = 2, operands: int = 2,
                 reference_error_rate: float = 0.0, seed: int = 0,
                 metadata: dict[str, Any] | None = None):
        self._args = {"num_rows": num_rows, "digits": digits, "operands": operands,
                      "reference_error_rate": reference_error_rate, "seed": seed}
        self.metadata = metadata

    def load(self) -> datasets.Dataset:
        try:
            return datasets.Dataset.from_list(arithmetic_problems(**self._args))
        except ValueError as err:
            raise DatasetError(f"ArithmeticDataset: {err}") from err

    def save(self, data: Any) -> None:
        raise DatasetError("ArithmeticDataset is read-only")

    def _describe(self) -> dict[str, Any]:
        return dict(self._args)
