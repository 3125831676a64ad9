"""The compare pipeline over every method and two seeds on a tiny model, then the
notebook that reads its outputs, executed headless."""

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from grao_pipeline.alignment.config import COMPARABLE_METHODS

from .conftest import TINY_RUN, kedro_run

COMPARE_RUN = {**TINY_RUN, "compare": {"seeds": [0, 1], "smoothing_window": 1,
                                       "bootstrap_resamples": 200}}


@pytest.mark.slow
def test_compare_every_method_two_seeds_then_the_notebook(project):
    kedro_run(project, ["data_processing", "sft"])
    left_for_resume = project / "data/06_models/checkpoints/grao/step-000001"
    left_for_resume.mkdir(parents=True)
    kedro_run(project, ["compare"], COMPARE_RUN)
    assert left_for_resume.is_dir()  # comparison runs never touch a method's checkpoints
    report = project / "data/08_reporting"
    table = pd.read_csv(report / "compare_table.csv")
    assert list(table.columns) == ["method", "metric", "value", "ci_low", "ci_high"]
    assert set(table["method"]) == set(COMPARABLE_METHODS)
    for metric in ("ras", "win_vs_reference", "nag", "net_win_vs_start", "mean_reward",
                   "kl_from_start", "response_length"):
        assert (table["metric"] == metric).sum() == len(COMPARABLE_METHODS)
    assert ((table["ci_low"] <= table["value"] + 1e-9) & (table["value"] <= table["ci_high"] + 1e-9)).all()
    reach = table[table["metric"] == "steps_to_90pct_reward"]
    assert set(reach["method"]) == set(COMPARABLE_METHODS) - {"sft_continued", "dpo"}
    md = (report / "compare_table.md").read_text()
    assert md.startswith("| method |") and "grao_no_imitation" in md
    logs = pd.read_csv(report / "compare_training_logs.csv")
    grao = logs[logs["method"] == "grao"]
    assert sorted(grao["seed"].unique()) == [0, 1] and grao["generated_samples"].max() == 2 * 2 * 2
    for name in ("compare_reward_curves.png", "compare_grao_shares.png"):
        assert (report / name).stat().st_size > 0
    completions = project / "data/07_model_output/compare_completions"
    assert {p.stem for p in completions.glob("*.jsonl")} == set(COMPARABLE_METHODS)

    nb = nbformat.read(project / "notebooks" / "compare.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(project / "notebooks")}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    assert any("[grao]" in o.get("text", "") for o in outputs)
