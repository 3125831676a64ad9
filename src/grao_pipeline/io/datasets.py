"""Kedro datasets the catalog needs: model directories, the GGUF import, raw data.

Models are never pickled: ``HFModelDataset`` writes ``save_pretrained`` directories
(safetensors) and reads them with ``from_pretrained(trust_remote_code=False)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
from kedro.io import AbstractDataset, DatasetError

from grao_pipeline.alignment.files import replace_atomically
from grao_pipeline.alignment.models import (
    ModelAndTokenizer,
    import_gguf,
    load_model,
    package_dir,
    save_model,
)


def _path_or_source(kind: str, path: str | None, source: str | None) -> None:
    if (path is None) == (source is None):
        raise DatasetError(f"{kind} needs exactly one of 'path' (a local folder; Kedro makes it "
                           "absolute) or 'source' (a hub id or builder name, passed unchanged)")


def _missing_local(path: str, kind: str) -> str:
    """Why a local ``path`` does not exist, and the fix: a hub id under ``path`` has been
    made absolute by Kedro; a project output has not been produced yet."""
    parts = Path(path).parts
    hub_like = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return (f"no {kind} at {path}. If '{hub_like}' is a hub id, write it as 'source: {hub_like}' "
            "(Kedro turns every catalog 'path' into a folder of the project); if it is an "
            "output of this project, run the pipeline that produces it first")


class HFModelDataset(AbstractDataset[ModelAndTokenizer, ModelAndTokenizer]):
    """A causal LM + tokenizer as a Hugging Face directory (``path``), or read-only from a
    hub id (``source``, passed to ``from_pretrained`` unchanged).

    Saves go through ``replace_atomically``: a crash mid-save leaves the previous
    model (or none), never a half-written one. ``trust_remote_code`` (default false)
    lets a model's own Python code run; it logs a warning.
    """

    def __init__(self, path: str | None = None, source: str | None = None,
                 trust_remote_code: bool = False, metadata: dict[str, Any] | None = None):
        _path_or_source("HFModelDataset", path, source)
        if not isinstance(trust_remote_code, bool):
            raise DatasetError(f"HFModelDataset.trust_remote_code = {trust_remote_code!r}: "
                               "must be true or false")
        self._path = path
        self._source = source
        self._trust_remote_code = trust_remote_code
        self.metadata = metadata

    def load(self) -> ModelAndTokenizer:
        if self._source is not None:
            return load_model(self._source, trust_remote_code=self._trust_remote_code)
        if not Path(self._path).exists():
            raise DatasetError(_missing_local(self._path, "model directory"))
        return load_model(self._path, trust_remote_code=self._trust_remote_code)

    def save(self, data: ModelAndTokenizer) -> None:
        if self._path is None:
            raise DatasetError(f"HFModelDataset(source={self._source}) is read-only; "
                               "give a 'path' to save")
        if not isinstance(data, ModelAndTokenizer):
            raise DatasetError(f"HFModelDataset({self._path}) expects a ModelAndTokenizer, "
                               f"got {type(data).__name__}")
        replace_atomically(self._path, lambda tmp: save_model(data, tmp))

    def _exists(self) -> bool:
        return self._path is not None and any(
            (Path(self._path) / f).is_file() for f in ("config.json", "adapter_config.json"))

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "source": self._source}


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
        try:
            raw = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as err:
            raise DatasetError(f"{path}: not UTF-8 at byte {err.start} "
                               f"({err.object[err.start:err.start + 1]!r})") from err
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


_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "imagefolder", "audiofolder"}


def _unicode_error(err: BaseException) -> UnicodeDecodeError | None:
    while err is not None:
        if isinstance(err, UnicodeDecodeError):
            return err
        err = err.__cause__ or err.__context__
    return None


class HFLoadDataset(AbstractDataset[None, Any]):
    """Read-only: any dataset ``datasets.load_dataset`` can open.

    ``path``: a local folder of data files (Kedro makes it absolute). ``source``: a hub
    id (where a hub is reachable) or a builder name (``json``, ``parquet``, … with
    ``load_args.data_files``), passed to ``load_dataset`` unchanged. ``load_args`` go to
    ``load_dataset`` (e.g. ``split``, ``data_dir``, ``data_files``); ``split`` is
    required so the result is one ``Dataset``.
    """

    def __init__(self, path: str | None = None, source: str | None = None,
                 load_args: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None):
        _path_or_source("HFLoadDataset", path, source)
        self._path = path
        self._source = source
        self._load_args = dict(load_args or {})
        if "split" not in self._load_args:
            raise DatasetError(f"HFLoadDataset({path or source}): load_args.split is required")
        if source in _BUILDERS and "data_files" not in self._load_args:
            raise DatasetError(f"HFLoadDataset: {source!r} is a builder: give load_args.data_files")
        self.metadata = metadata

    def load(self):
        import datasets

        if self._path is not None and not Path(self._path).exists():
            raise DatasetError(_missing_local(self._path, "dataset folder"))
        where = self._load_args.get("data_files", self._path or self._source)
        try:
            loaded = datasets.load_dataset(self._path or self._source, **self._load_args)
        except Exception as err:
            bad = _unicode_error(err)
            if bad is None:
                raise
            raise DatasetError(f"{where}: not UTF-8 at byte {bad.start} "
                               f"({bad.object[bad.start:bad.start + 1]!r})") from err
        # pyarrow's JSON reader stores invalid UTF-8 as is; it would fail only when a
        # row is read, far from here.
        try:
            loaded.data.table.validate(full=True)
        except pa.ArrowInvalid as err:
            raise DatasetError(f"{where}: not UTF-8 text ({err}); "
                               "re-encode the file as UTF-8") from err
        return loaded

    def save(self, data: Any) -> None:
        raise DatasetError("HFLoadDataset is read-only")

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "source": self._source, "load_args": self._load_args}
