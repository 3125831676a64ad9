"""Outputs that are either complete or absent: no half-written file for a later run or
``dvc`` to take as finished.

``replace_atomically(final, write)`` has ``write`` fill a temporary sibling
(``.<name>.tmp-<pid>``), then renames it over ``final`` (a file with one ``os.replace``;
a folder by moving the old one aside first). A folder save never deletes what this
project did not write: each folder it writes carries a manifest of its entries
(``MANIFEST``), and replacing a folder that holds entries neither in its manifest nor
in the new output is refused, naming them. Leftover temporaries of a killed run are
removed on the next save of the same output, unless the process named in their suffix
still runs (Optuna workers may save the same report at once). The Kedro datasets of
``grao_pipeline.io`` route their saves through it; so does the core where it writes a
folder of its own (the embedded judge's model).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

MANIFEST = ".grao-pipeline-output.json"
"""In each folder this project writes: the entries it wrote there."""


class ForeignFolderError(FileExistsError):
    """A save would replace a folder holding files this project did not write."""


def _written_by_us(folder: Path) -> set[str]:
    try:
        return set(json.loads((folder / MANIFEST).read_text())["entries"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _refuse_foreign(final: Path, tmp: Path) -> None:
    """Refuse to replace ``final`` if that would delete entries we never wrote."""
    ours = _written_by_us(final) | {p.name for p in tmp.iterdir()}
    foreign = sorted(p.name for p in final.iterdir() if p.name not in ours)
    if foreign:
        _remove(tmp)
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ForeignFolderError(
            f"refusing to save over {final}: it holds {shown}, which this project did not "
            f"write (not in its {MANIFEST}), and replacing the folder would delete them. "
            "Point the catalog entry's path at a new or empty folder, or move those files away")


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
    if tmp.is_dir():
        entries = sorted(p.name for p in tmp.iterdir() if p.name != MANIFEST)
        (tmp / MANIFEST).write_text(json.dumps({"entries": entries}))
        if final.is_dir():
            _refuse_foreign(final, tmp)
    if tmp.is_dir() and final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)
