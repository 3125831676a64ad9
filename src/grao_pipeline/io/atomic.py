"""Outputs that are either complete or absent: no half-written file for a later run or
``dvc`` to take as finished.

``replace_atomically(final, write)`` has ``write`` fill a temporary sibling
(``.<name>.tmp-<pid>``), then renames it over ``final`` (a file with one ``os.replace``;
a folder by moving the old one aside first). Leftover temporaries of a killed run are
removed on the next save of the same output, unless the process named in their suffix
still runs (Optuna workers may save the same report at once).

The catalog uses the ``kedro-datasets`` types below, each the library's own class with
its save routed through ``replace_atomically`` on the local filesystem. Object stores
(s3://, gs://) write whole objects already; there the library's save runs unchanged.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from kedro_datasets.huggingface import ArrowDataset as _ArrowDataset
from kedro_datasets.json import JSONDataset as _JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset as _MatplotlibDataset
from kedro_datasets.pandas import CSVDataset as _CSVDataset
from kedro_datasets.pandas import JSONDataset as _PandasJSONDataset
from kedro_datasets.text import TextDataset as _TextDataset
from kedro_datasets.yaml import YAMLDataset as _YAMLDataset


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _writer_alive(leftover: Path) -> bool:
    """Whether the process named by a temporary's ``-<pid>`` suffix still runs (Optuna
    workers share a data directory and may save the same report at once)."""
    pid = leftover.name.rsplit("-", 1)[-1]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_atomically(final: str | Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` and move ``tmp`` to ``final`` in one step."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for pattern in (f".{final.name}.tmp-*", f".{final.name}.old-*"):
        for leftover in final.parent.glob(pattern):
            if not _writer_alive(leftover):
                _remove(leftover)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    write(tmp)
    if tmp.is_dir() and final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


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
