"""GRAO with LoRA against the full fine-tune, on the default budget and data.

    make run                                    # once: data splits and the SFT warm start
    .venv/bin/python benchmarks/lora_vs_full.py [--rank 16]

Each variant trains GRAO from data/06_models/sft with conf/base's parameters (only
``lora`` differs) in a worker process of its own, so its peak RSS is its own, then
answers and scores the held-out prompts as the evaluation pipeline does. A third,
short measurement gives the frozen start policy's cost (KL, DPO): a deep copy of the
policy against the LoRA policy with its adapters disabled. Prints the machine, a
table, and writes benchmarks/lora_results.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parameters() -> dict:
    from kedro.config import OmegaConfigLoader

    return OmegaConfigLoader(conf_source=str(ROOT / "conf"), base_env="base", default_run_env="base")["parameters"]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def variant(name: str, changes: dict, queue) -> None:
    import datasets
    import torch

    from grao_pipeline.alignment.config import EvalConfig, RewardConfig
    from grao_pipeline.alignment.evaluation import answer_prompts, score_answers
    from grao_pipeline.alignment.models import load_model
    from grao_pipeline.alignment.rewards import CompositeReward
    from grao_pipeline.alignment.run import train_method
    from grao_pipeline.pipelines.evaluation.nodes import summarise_evaluation

    torch.set_num_threads(2)
    p = parameters()
    grao = {**p["grao"], **changes, "checkpoint_dir": None, "checkpoint_every": 0,
            "show_progress": False}
    rewards = RewardConfig(**p["rewards"])
    train = datasets.load_from_disk(str(ROOT / "data/05_model_input/train")).to_list()
    test = datasets.load_from_disk(str(ROOT / "data/05_model_input/test"))
    start = load_model(ROOT / "data/06_models/sft")
    trainable = sum(q.numel() for q in start.model.parameters())
    t0 = time.perf_counter()
    policy, log, title = train_method("grao", start, train, {"grao": grao}, CompositeReward(rewards))
    seconds = time.perf_counter() - t0
    if changes.get("lora", {}).get("enabled"):
        trainable = sum(q.numel() for q in policy.model.parameters() if q.requires_grad)
    train_rss = rss_mb()
    eval_cfg = EvalConfig(**p["evaluation"])
    sft = load_model(ROOT / "data/06_models/sft")
    start_answers = score_answers(answer_prompts(sft, test, eval_cfg), rewards, "sft")
    scored = score_answers(answer_prompts(policy, test, eval_cfg, start_policy=sft), rewards, name,
                           start_answers)
    metrics, _, _ = summarise_evaluation(eval_cfg, scored)
    queue.put({"variant": name, "title": title, "learning_rate": grao["learning_rate"],
               "train_seconds": seconds,
               "s_per_step": seconds / len(log), "trainable_parameters": trainable,
               "peak_rss_mb_training": train_rss,
               "metrics": {k: metrics[name][k] for k in ("mean_reward", "ras", "nag", "kl_from_start",
                                                         "response_length")}})


def start_policy_cost(queue) -> None:
    import gc

    import torch

    from grao_pipeline.alignment.config import LoRAConfig
    from grao_pipeline.alignment.lora import with_adapters
    from grao_pipeline.alignment.methods.base import start_policy_copy
    from grao_pipeline.alignment.models import load_model

    torch.set_num_threads(2)
    out = {}
    for name, lora in (("full", LoRAConfig()), ("lora", LoRAConfig(enabled=True))):
        model = with_adapters(load_model(ROOT / "data/06_models/sft").model, lora, 0, name)
        # Loaded weights may still be pages of the mapped file: touch them first, or the
        # copy's reads would count them too (training touches them anyway).
        sum(float(p.detach().sum()) for p in model.parameters())
        gc.collect()
        before = current_rss_mb()
        start = start_policy_copy(model)
        gc.collect()
        out[name] = current_rss_mb() - before
        del start, model
        gc.collect()
    queue.put({"start_policy_mb": out})


def in_worker(target, *args) -> dict:
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode:
        sys.exit(f"worker {target.__name__}{args[:1]} failed with exit code {proc.exitcode}")
    return result


def start_policy_line(cost: dict) -> str:
    return (f"frozen start policy (KL, DPO): full fine-tune copy +{cost['start_policy_mb']['full']:.0f} MB, "
            f"LoRA adapters disabled +{cost['start_policy_mb']['lora']:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-4,
                        help="LoRA's learning rate (adapters usually need ~10× the full fine-tune's)")
    parser.add_argument("--start-policy-only", action="store_true",
                        help="re-measure only the start policy's cost into an existing results file")
    args = parser.parse_args()
    import torch
    from step_time import cpu_name  # the benchmarks' shared machine description

    from grao_pipeline.alignment.hardware import bf16_supported

    print(f"machine: {cpu_name()}; torch {torch.__version__}; native bf16: {bf16_supported()}")
    lora = {"enabled": True, "rank": args.rank, "alpha": 2 * args.rank,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    out = ROOT / "benchmarks/lora_results.json"
    if args.start_policy_only:
        cost = in_worker(start_policy_cost)
        out.write_text(json.dumps({**json.loads(out.read_text()), **cost}, indent=2))
        print(start_policy_line(cost) + f"; updated {out.relative_to(ROOT)}")
        return
    results = [in_worker(variant, "full", {}),
               in_worker(variant, "lora", {"lora": lora, "learning_rate": args.learning_rate})]
    cost = in_worker(start_policy_cost)
    print(f"\n{'variant':8} {'lr':>7} {'trainable':>12} {'s/step':>7} {'peak RSS MB':>12}  "
          "held-out reward [95% CI]      RAS [95% CI]")
    for r in results:
        m = r["metrics"]
        print(f"{r['variant']:8} {r['learning_rate']:>7.0e} {r['trainable_parameters']:>12,} {r['s_per_step']:>7.2f} "
              f"{r['peak_rss_mb_training']:>12.0f}  {m['mean_reward']['value']:.3f} "
              f"[{m['mean_reward']['ci_low']:.3f}, {m['mean_reward']['ci_high']:.3f}]   "
              f"{m['ras']['value']:.3f} [{m['ras']['ci_low']:.3f}, {m['ras']['ci_high']:.3f}]")
    print(start_policy_line(cost))
    out.write_text(json.dumps({"machine": cpu_name(), "variants": results, **cost}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
