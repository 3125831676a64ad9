"""Every catalog output is complete or absent: a failure mid-save keeps the previous
version, and a killed save's temporary is cleaned by the next save."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import yaml

from grao_pipeline.io import atomic
from tests.pipelines.conftest import ROOT

CASES = {
    "json": (lambda p: atomic.JSONDataset(filepath=str(p / "m.json")), {"a": 1}, {"a": 2}),
    "yaml": (lambda p: atomic.YAMLDataset(filepath=str(p / "m.yml")), {"a": 1}, {"a": 2}),
    "text": (lambda p: atomic.TextDataset(filepath=str(p / "m.md")), "one", "two"),
    "csv": (lambda p: atomic.CSVDataset(filepath=str(p / "t.csv"), save_args={"index": False}),
            pd.DataFrame({"x": [1]}), pd.DataFrame({"x": [2]})),
    "jsonl": (lambda p: atomic.PandasJSONDataset(filepath=str(p / "c.jsonl"),
                                                 load_args={"orient": "records", "lines": True},
                                                 save_args={"orient": "records", "lines": True}),
              pd.DataFrame({"x": [1]}), pd.DataFrame({"x": [2]})),
    "arrow": (lambda p: atomic.ArrowDataset(path=str(p / "arrow")),
              datasets.Dataset.from_dict({"x": [1]}), datasets.Dataset.from_dict({"x": [2]})),
}


def same(a, b):
    if isinstance(a, pd.DataFrame):
        return a.equals(b)
    if isinstance(a, datasets.Dataset):
        return a.to_dict() == b.to_dict()
    return a == b


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_failed_save_keeps_the_previous_version(tmp_path, kind, monkeypatch):
    make, first, second = CASES[kind]
    dataset = make(tmp_path)
    dataset.save(first)
    before = sorted(p.name for p in tmp_path.iterdir())

    def crash_after_writing(self, *args, **kwargs):
        Path(str(self._get_save_path())).mkdir(parents=True, exist_ok=True)
        raise OSError("disk full")

    base = type(dataset).__mro__[2]  # the kedro-datasets class under the atomic wrapper
    monkeypatch.setattr(base, "save", crash_after_writing)
    with pytest.raises(Exception, match="disk full"):
        dataset.save(second)
    monkeypatch.undo()
    assert same(make(tmp_path).load(), first)
    dataset.save(second)  # the next save cleans the temporary the failed one left
    assert same(make(tmp_path).load(), second)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_figure_saved_atomically_is_a_valid_png(tmp_path):
    atomic.MatplotlibDataset(filepath=str(tmp_path / "f.png")).save(plt.figure())
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


def test_sigkill_mid_write_leaves_the_old_file(tmp_path):
    """A real kill between the temporary's write and the rename."""
    target = tmp_path / "metrics.json"
    atomic.JSONDataset(filepath=str(target)).save({"old": True})
    script = f"""
import os, signal
import grao_pipeline.io.atomic as atomic
real = os.replace
def die(src, dst):
    os.kill(os.getpid(), signal.SIGKILL)
os.replace = die
atomic.JSONDataset(filepath={str(target)!r}).save({{"new": True}})
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == -signal.SIGKILL
    assert yaml.safe_load(target.read_text()) == {"old": True}
    assert any(p.name.startswith(".metrics.json.tmp-") for p in tmp_path.iterdir())
    atomic.JSONDataset(filepath=str(target)).save({"new": True})
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# ---- issue 31, case 9: a save onto a user's folder deleted everything in it -------------


def test_a_save_never_deletes_files_this_project_did_not_write(tmp_path, tiny):
    from kedro.io import DatasetError

    from grao_pipeline.io import HFModelDataset

    folder = tmp_path / "my_models"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    (folder / "notes").mkdir()
    with pytest.raises(DatasetError, match=rf"refusing to save over {folder}: it holds "
                                                 r"notes, thesis.tex, which this project did not write"):
        HFModelDataset(path=str(folder)).save(tiny)
    assert sorted(p.name for p in folder.iterdir()) == ["notes", "thesis.tex"]
    assert not list(tmp_path.glob(".my_models.*")), "the temporary was left behind"


def test_our_own_folder_is_replaced_even_where_its_entries_change(tmp_path):
    from grao_pipeline.alignment.files import MANIFEST, replace_atomically

    def writer(*names):
        def write(tmp):
            tmp.mkdir()
            for name in names:
                (tmp / name).write_text(name)
        return write

    folder = tmp_path / "out"
    replace_atomically(folder, writer("a.safetensors", "config.json"))
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "a.safetensors", "config.json"]
    replace_atomically(folder, writer("b.safetensors", "config.json"))  # a.* was ours: it goes
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "b.safetensors", "config.json"]
    # an output written before manifests existed is replaced when the new one rewrites it all
    (folder / MANIFEST).unlink()
    replace_atomically(folder, writer("b.safetensors", "config.json"))
    assert (folder / "b.safetensors").exists()
