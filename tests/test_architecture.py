"""The layout holds: import-linter's contracts (pyproject.toml) are kept by the tree and
broken by an upward import, and no module grows past the size the layout allows."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(project: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    return subprocess.run([str(LINT), "--no-cache"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_tree_keeps_every_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_into_the_config_breaks_the_layers_and_makes_a_cycle(tmp_path):
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    config = tmp_path / "src/grao_pipeline/alignment/config.py"
    config.write_text(config.read_text()
                      + "\nfrom grao_pipeline.alignment.methods import registered_methods  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if "BROKEN" in line]
    assert any("No import cycles" in line for line in broken), result.stdout
    assert "grao_pipeline.alignment.config -> grao_pipeline.alignment.methods" in result.stdout


def test_no_module_in_src_is_longer_than_400_lines():
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines())
             for p in (ROOT / "src").rglob("*.py")}
    assert max(sizes.values()) <= 400, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_nothing_points_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}" for folder in ("src", "tests", "docs", "conf")
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and p.suffix in (".py", ".md", ".cpp", ".yml", ".yaml")
            and p != Path(__file__) and "../shared/" in p.read_text(errors="ignore")]
    assert not hits, hits
