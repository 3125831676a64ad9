"""Read-only datasets the project generates itself (seeded, nothing downloaded)."""

from __future__ import annotations

from typing import Any

import datasets
from kedro.io import AbstractDataset, DatasetError

from grao_pipeline.alignment.rewards.verifiable import arithmetic_problems, variant


class ArithmeticDataset(AbstractDataset[None, datasets.Dataset]):
    """Addition problems with ``answer``, ``reference`` and ``reference_is_wrong`` columns
    (see ``alignment.rewards.verifiable``); read them with ``data_processing.format:
    columns``. ``variant`` (v0-v4) sets the references' format, noise and difficulty;
    ``reference_error_rate``, when given, replaces the variant's noise."""

    def __init__(self, num_rows: int = 2000, variant: str = "v0",
                 reference_error_rate: float | None = None, seed: int = 0,
                 metadata: dict[str, Any] | None = None):
        self._variant, self._rate = variant, reference_error_rate
        self._args = {"num_rows": num_rows, "seed": seed}
        self.metadata = metadata

    def load(self) -> datasets.Dataset:
        try:
            v = variant(self._variant)
            rate = v.reference_error_rate if self._rate is None else float(self._rate)
            return datasets.Dataset.from_list(arithmetic_problems(
                **self._args, digits=v.digits, operands=v.operands, reference_error_rate=rate,
                reference_format=v.reference_format))
        except ValueError as err:
            raise DatasetError(f"ArithmeticDataset: {err}") from err

    def save(self, data: Any) -> None:
        raise DatasetError("ArithmeticDataset is read-only")

    def _describe(self) -> dict[str, Any]:
        return {**self._args, "variant": self._variant, "reference_error_rate": self._rate}
