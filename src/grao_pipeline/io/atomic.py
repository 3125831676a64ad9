"""Outputs that are either complete or absent: no half-written file for a later run or
``dvc`` to take as finished.

Each save goes through ``alignment.files.replace_atomically``: a temporary sibling,
then one rename over the final path.

The catalog uses the ``kedro-datasets`` types below, each the library's own class with
its save routed through ``replace_atomically`` on the local filesystem. Object stores
(s3://, gs://) write whole objects already; there the library's save runs unchanged.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro_datasets.huggingface import ArrowDataset as _ArrowDataset
from kedro_datasets.json import JSONDataset as _JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset as _MatplotlibDataset
from kedro_datasets.pandas import CSVDataset as _CSVDataset
from kedro_datasets.pandas import JSONDataset as _PandasJSONDataset
from kedro_datasets.text import TextDataset as _TextDataset
from kedro_datasets.yaml import YAMLDataset as _YAMLDataset

from grao_pipeline.alignment.files import replace_atomically


class _AtomicSave:
    _atomic_path: PurePosixPath | None = None

    def _get_save_path(self) -> PurePosixPath:
        return self._atomic_path or super()._get_save_path()

    def save(self, data: Any) -> None:
        if self._protocol != "file":
            return super().save(data)

        def write(tmp: Path) -> None:
            self._atomic_path = PurePosixPath(tmp)
            try:
                super(_AtomicSave, self).save(data)
            finally:
                self._atomic_path = None

        replace_atomically(Path(str(super()._get_save_path())), write)


def _atomic(base: type, **attributes) -> type:
    return type(base.__name__, (_AtomicSave, base), {
        "__module__": __name__,
        "__doc__": f"``{base.__module__}.{base.__name__}``, saved atomically (see module doc).",
        **attributes})


# NaN is not JSON: a metric that is not a number must be refused (or written as null by
# the node that knows why), never written as a bare NaN a JSON reader rejects.
JSONDataset = _atomic(_JSONDataset, DEFAULT_SAVE_ARGS={**_JSONDataset.DEFAULT_SAVE_ARGS,
                                                       "allow_nan": False})
YAMLDataset = _atomic(_YAMLDataset)
TextDataset = _atomic(_TextDataset)
CSVDataset = _atomic(_CSVDataset)
PandasJSONDataset = _atomic(_PandasJSONDataset)
MatplotlibDataset = _atomic(_MatplotlibDataset)
ArrowDataset = _atomic(_ArrowDataset)
