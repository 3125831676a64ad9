"""Kedro datasets the catalog needs: model directories, the GGUF import, raw data.

Models are never pickled: ``HFModelDataset`` writes ``save_pretrained`` directories
(safetensors) and reads them with ``from_pretrained(trust_remote_code=False)``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from grao_pipeline.alignment.models import (
    ModelAndTokenizer,
    import_gguf,
    load_model,
    package_dir,
    save_model,
)


class HFModelDataset(AbstractDataset[ModelAndTokenizer, ModelAndTokenizer]):
    """A causal LM + tokenizer as a Hugging Face directory (or, read-only, a hub id).

    Saves go to a temporary sibling folder that is renamed into place, so a crash
    mid-save leaves the previous model intact.
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = path
        self.metadata = metadata

    def _is_local(self) -> bool:
        return Path(self._path).exists() or self._path.startswith((".", "/", "data/"))

    def load(self) -> ModelAndTokenizer:
        if self._is_local() and not (Path(self._path) / "config.json").is_file():
            raise DatasetError(f"no model directory at {self._path} (config.json missing); "
                               "run the pipeline that produces it first")
        return load_model(self._path)

    def save(self, data: ModelAndTokenizer) -> None:
        if not isinstance(data, ModelAndTokenizer):
            raise DatasetError(f"HFModelDataset({self._path}) expects a ModelAndTokenizer, "
                               f"got {type(data).__name__}")
        final = Path(self._path)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(data, tmp)
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def _exists(self) -> bool:
        return (Path(self._path) / "config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path}


class GGUFModelDataset(AbstractDataset[None, ModelAndTokenizer]):
    """Read-only: a GGUF checkpoint, de-quantised into a trainable fp32 model.

    Give ``package`` (an installed package that ships the file, located without being
    imported) or ``directory``, plus ``gguf_file``.
    """

    def __init__(self, gguf_file: str, package: str | None = None, directory: str | None = None,
                 metadata: dict[str, Any] | None = None):
        if (package is None) == (directory is None):
            raise DatasetError("GGUFModelDataset needs exactly one of 'package' or 'directory'")
        self._gguf_file = gguf_file
        self._package = package
        self._directory = directory
        self.metadata = metadata

    def _dir(self) -> Path:
        return package_dir(self._package) if self._package else Path(self._directory)

    def load(self) -> ModelAndTokenizer:
        return import_gguf(self._dir(), self._gguf_file)

    def save(self, data: Any) -> None:
        raise DatasetError("GGUFModelDataset is read-only")

    def _describe(self) -> dict[str, Any]:
        return {"gguf_file": self._gguf_file, "package": self._package,
                "directory": self._directory}


class ChitchatDataset(AbstractDataset[None, Any]):
    """Read-only: the conversations shipped by the ``chitchat-dataset`` package (MIT).

    Returns a ``datasets.Dataset`` with one row per conversation and a ``turns``
    column: a list of {"sender", "text"}, a turn being one sender's consecutive
    messages joined by spaces.
    """

    def __init__(self, path: str | None = None, metadata: dict[str, Any] | None = None):
        self._path = path
        self.metadata = metadata

    def load(self):
        import datasets

        path = Path(self._path) if self._path else package_dir("chitchat_dataset") / "dataset.json"
        if not path.is_file():
            raise DatasetError(f"chitchat data file not found: {path}")
        raw = json.loads(path.read_text())
        rows = []
        for conv_id, conv in raw.items():
            turns = [{"sender": str(t[0]["sender"]) if t else "",
                      "text": " ".join(str(m.get("text", "")) for m in t)}
                     for t in conv.get("messages", [])]
            rows.append({"conversation_id": conv_id, "turns": turns})
        return datasets.Dataset.from_list(rows)

    def save(self, data: Any) -> None:
        raise DatasetError("ChitchatDataset is read-only")

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path or "<chitchat_dataset package>"}


class HFLoadDataset(AbstractDataset[None, Any]):
    """Read-only: any dataset ``datasets.load_dataset`` can open: a hub id (where a hub
    is reachable), a local folder of data files, or a builder name with ``data_files``.

    ``load_args`` go to ``load_dataset`` (e.g. ``split``, ``data_dir``, ``data_files``);
    ``split`` is required so the result is one ``Dataset``.
    """

    def __init__(self, path: str, load_args: dict[str, Any] | None = None,
                 metadata: dict[str, Any] | None = None):
        self._path = path
        self._load_args = dict(load_args or {})
        if "split" not in self._load_args:
            raise DatasetError(f"HFLoadDataset({path}): load_args.split is required")
        self.metadata = metadata

    def load(self):
        import datasets

        return datasets.load_dataset(self._path, **self._load_args)

    def save(self, data: Any) -> None:
        raise DatasetError("HFLoadDataset is read-only")

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "load_args": self._load_args}
