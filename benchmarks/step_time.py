"""Seconds per RL step: our GRPO and GRAO steps against TRL 1.16's GRPOTrainer, side by
side on the same machine and the same work, with the machine's measured floors.

    .venv/bin/python benchmarks/step_time.py                # the common configuration
    .venv/bin/python benchmarks/step_time.py --scaling      # + G x completion-length sweep

Common configuration (issue 10): SmolLM2-135M-Instruct; 2 chat-templated chit-chat
questions of equal token length x G=4; exactly 48 new tokens (min = max); temperature
1.0; one update per rollout; no KL term (beta 0); the shared reward. Each trainer runs
in a worker process of its own (so its peak RSS is its own), and the parent alternates
them step by step, A B C C B A ..., so drift in the machine hits all of them alike;
only one trainer computes at any moment. Precision: bf16 where the CPU has native bf16
(AMX / AVX512-BF16), else fp32, for every trainer; the output says which.

Floors: generation = decode steps x weight bytes / measured memory bandwidth (each
decode step streams the weights once); update = 6 x parameters x tokens / measured
matmul peak (forward + backward). Beside the floors, a kernel reference: the GEMMs of
the same decode steps alone, on the sampling copy's packed bf16 weights (the fused
kernel's where it runs, and oneDNN's, the fastest small-row kernel torch has on a CPU),
so each run shows how much of generation's distance to its floor is the kernel's and
how much the other ops'. Writes benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION_POOL = 400  # chit-chat questions searched for two of equal token length


# ---------------------------------------------------------------- machine -----------
def cpu_name() -> str:
    from grao_pipeline.alignment.hardware import cpu_name as name

    return name()


def measure_peaks() -> dict:
    """fp32 and bf16 matmul GFLOP/s (2048^3, best of 5) and copy bandwidth GB/s."""
    import torch

    def matmul(dtype, n=2048, reps=5):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(reps if dtype == torch.float32 else 2))
        return 2 * n**3 / best / 1e9

    src = torch.empty(64 * 2**20, dtype=torch.float32)  # 256 MB, far beyond any cache
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(5))
    from grao_pipeline.alignment.hardware import cpu_flags

    flags = cpu_flags()
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "fp32_gflops": matmul(torch.float32), "bf16_gflops": matmul(torch.bfloat16, n=1024)
            if not ("amx_bf16" in flags or "avx512_bf16" in flags) else matmul(torch.bfloat16),
            "bandwidth_gbs": 2 * src.numel() * 4 / best / 1e9}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------------------------------------------------------------- workers -----------
def load_policy():
    from grao_pipeline.alignment.models import import_smollm2, load_model

    base = ROOT / "data/06_models/base"
    return load_model(base) if (base / "config.json").is_file() else import_smollm2()


def two_questions(tokenizer) -> list[str]:
    """The first two chit-chat questions whose chat-templated prompts have the same
    token length, so no prompt padding differs between trainers."""
    from grao_pipeline.alignment.config import DataConfig
    from grao_pipeline.alignment.tokens import prompt_token_lengths
    from grao_pipeline.io import ChitchatDataset
    from grao_pipeline.pipelines.data_processing.nodes import clean_and_filter, extract_pairs

    rows, report = extract_pairs(ChitchatDataset().load(), DataConfig())
    rows, _ = clean_and_filter(rows[:QUESTION_POOL * 4], report, DataConfig())
    prompts = [r["prompt"] for r in rows[:QUESTION_POOL]]
    seen: dict[int, str] = {}
    for prompt, n in zip(prompts, prompt_token_lengths(tokenizer, prompts), strict=True):
        if n in seen and 12 <= n <= 40:
            return [seen[n], prompt]
        seen.setdefault(n, prompt)
    raise RuntimeError("no two questions of equal token length")


def wait_for_go() -> bool:
    line = sys.stdin.readline().strip()
    return line == "step"


def emit(payload: dict) -> None:
    print("RESULT " + json.dumps(payload), flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(method_name: str, cfg: dict) -> None:
    import torch

    from grao_pipeline.alignment.methods import get_method
    from grao_pipeline.alignment.methods.grao import GRAOMethodConfig
    from grao_pipeline.alignment.methods.grpo import GRPOConfig
    from grao_pipeline.alignment.rewards import CompositeReward, RewardConfig
    from grao_pipeline.alignment.trainer import train

    torch.set_num_threads(cfg["threads"])
    policy = load_policy()
    questions = two_questions(policy.tokenizer)
    common = dict(steps=cfg["total_steps"], prompts_per_step=2, num_generations=cfg["G"],
                  max_completion_tokens=cfg["tokens"], temperature=1.0, learning_rate=2e-5,
                  mixed_precision=cfg["precision"], sampling_dtype="auto", show_progress=False,
                  max_prompt_tokens=128, kl_coef=0.0)
    config = GRAOMethodConfig(**common) if method_name == "grao" else GRPOConfig(**common)
    method = get_method(method_name).build(policy.tokenizer, CompositeReward(RewardConfig()), config,
                                           policy.model)

    def exactly_n_tokens(sampler, tokenizer, encoded, prompts, g, max_new, temperature):
        return sampler.sample(tokenizer, encoded, g, max_new, temperature, min_new_tokens=max_new)

    method.sample_fn = exactly_n_tokens
    rows = [{"prompt": q, "reference": "Fine, thanks for asking."} for q in questions]
    n_params = sum(p.numel() for p in policy.model.parameters())

    def report(step: int, row: dict) -> None:
        emit({"step": step, "s_per_step": row["time/step"], "generation": row["time/generate"],
              "scoring": row["time/score"], "update": row["time/update"],
              "generated_tokens": row["samples"] * cfg["tokens"], "n_params": n_params})
        if step < cfg["total_steps"]:
            wait_for_go()

    emit({"ready": True, "questions": questions})
    wait_for_go()
    train(policy.model, method, rows, config, callbacks=[report])
    emit({"peak_rss_mb": peak_rss_mb()})


def run_trl(cfg: dict) -> None:
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from grao_pipeline.alignment.rewards import CompositeReward, RewardConfig
    from grao_pipeline.alignment.tokens import format_prompts

    torch.set_num_threads(cfg["threads"])
    policy = load_policy()
    questions = two_questions(policy.tokenizer)
    reward = CompositeReward(RewardConfig())
    times = {"generation": 0.0, "scoring": 0.0}

    def shared_reward(prompts, completions, **kwargs):
        return reward(list(prompts), list(completions), list(completions))

    args = GRPOConfig(
        output_dir=str(ROOT / "data/10_benchmarks/trl"), per_device_train_batch_size=2 * cfg["G"],
        num_generations=cfg["G"], max_completion_length=cfg["tokens"], temperature=1.0,
        top_k=0, top_p=1.0, beta=0.0, num_iterations=1, steps_per_generation=1, loss_type="grpo",
        learning_rate=2e-5, max_steps=cfg["total_steps"], bf16=cfg["precision"] == "bf16",
        use_cpu=True, gradient_checkpointing=False, generation_kwargs={"min_new_tokens": cfg["tokens"]},
        logging_steps=10_000, save_strategy="no", report_to="none", disable_dropout=True,
        dataloader_num_workers=0, seed=0)
    dataset = datasets.Dataset.from_list([{"prompt": p} for p in format_prompts(policy.tokenizer, questions)])
    trainer = GRPOTrainer(model=policy.model, reward_funcs=shared_reward, args=args,
                          train_dataset=dataset, processing_class=policy.tokenizer)
    n_params = sum(p.numel() for p in policy.model.parameters())

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[name] += time.perf_counter() - t
        return wrapper

    trainer._generate_single_turn = timed("generation", trainer._generate_single_turn)
    trainer._calculate_rewards = timed("scoring", trainer._calculate_rewards)

    class Lockstep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            wait_for_go()
            times.update(generation=0.0, scoring=0.0, start=time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            total = time.perf_counter() - times["start"]
            emit({"step": state.global_step, "s_per_step": total, "generation": times["generation"],
                  "scoring": times["scoring"], "update": total - times["generation"] - times["scoring"],
                  "generated_tokens": 2 * cfg["G"] * cfg["tokens"], "n_params": n_params})

    trainer.add_callback(Lockstep())
    emit({"ready": True, "questions": questions})
    trainer.train()
    emit({"peak_rss_mb": peak_rss_mb()})


class Worker:
    def __init__(self, kind: str, cfg: dict):
        env = {**os.environ, "OMP_NUM_THREADS": str(cfg["threads"]), "HF_HUB_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.kind = kind
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", kind, "--config", json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT)
        self.ready = self.read()

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        raise RuntimeError(f"worker {self.kind} exited with {self.proc.wait()}")

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self.read()

    def finish(self) -> float:
        result = self.read()
        self.proc.wait(timeout=120)
        return result["peak_rss_mb"]


# ---------------------------------------------------------------- driver ------------
def bench(kinds: list[str], cfg: dict, warmup: int, timed_steps: int) -> dict:
    """Start every worker, warm each up, then alternate them step by step."""
    cfg = {**cfg, "total_steps": warmup + timed_steps}
    workers = [Worker(k, cfg) for k in kinds]
    for _ in range(warmup):
        for w in workers:
            w.step()
    rows: dict[str, list[dict]] = {k: [] for k in kinds}
    order = workers
    while min(len(r) for r in rows.values()) < timed_steps:
        for w in order:
            rows[w.kind].append(w.step())
        order = order[::-1]  # A B C, then C B A
    out = {}
    for w in workers:
        steps = rows[w.kind]
        total = [r["s_per_step"] for r in steps]
        out[w.kind] = {
            "s_per_step_median": statistics.median(total), "s_per_step_min": min(total),
            "s_per_step_max": max(total), "steps": len(total),
            **{f"{k}_median": statistics.median(r[k] for r in steps) for k in ("generation", "scoring", "update")},
            "tokens_per_s": steps[0]["generated_tokens"] / statistics.median(total),
            "n_params": steps[0]["n_params"], "peak_rss_mb": w.finish()}
    out["questions"] = workers[0].ready["questions"]
    return out


def floors(result: dict, machine: dict, cfg: dict, precision: str, prompt_tokens: int) -> dict:
    n = result["grpo"]["n_params"]
    weight_bytes = n * (2 if precision == "bf16" else 4)
    peak = (machine["bf16_gflops"] if precision == "bf16" else machine["fp32_gflops"]) * 1e9
    sequences = 2 * cfg["G"]
    update_tokens = sequences * (prompt_tokens + cfg["tokens"])
    return {"generation_s": cfg["tokens"] * weight_bytes / (machine["bandwidth_gbs"] * 1e9),
            "update_s": 6 * n * update_tokens / peak,
            "grao_update_s": 6 * n * (update_tokens + 2 * (prompt_tokens + cfg["tokens"])) / peak}


def decode_gemms_s(model, rows: int, steps: int, decode_kernel: str) -> float | None:
    """Seconds for the GEMMs of ``steps`` decode steps of ``rows`` rows alone: every
    packed linear of the sampling copy (as ``decode_kernel`` packs it) in turn, on fixed
    inputs, best of 3. Each weight is read from memory once a step, as in generation
    (the weights are far larger than any cache). None where the copy has no packed
    linears (no native bf16)."""
    import torch

    from grao_pipeline.alignment.generation import kernels
    from grao_pipeline.alignment.generation.packing import PackedLinear, sampling_copy

    copy_model = sampling_copy(model, "auto", rows, decode_kernel)
    gemms = [m for m in copy_model.modules() if isinstance(m, PackedLinear)]
    if not gemms:
        return None
    inputs = {m.in_features: torch.randn(rows, m.in_features, dtype=torch.bfloat16) for m in gemms}

    def call(gemm):  # the fused step calls the kernel's GEMM itself, float32 out
        if gemm.layout == kernels.VNNI_LAYOUT:
            return kernels.vnni_linear(inputs[gemm.in_features], gemm.packed, gemm.bias, gemm.out_features)
        return gemm(inputs[gemm.in_features])

    def decode_steps():
        for _ in range(steps):
            for gemm in gemms:
                call(gemm)

    with torch.inference_mode():
        decode_steps()
        return min(_timed(decode_steps) for _ in range(3))


def scaling(cfg: dict, steps: int) -> list[dict]:
    """s/step and peak RSS of ours (GRPO) and TRL for G in {4, 8, 16} x completion
    lengths {48, 128}, one warm-up step each."""
    rows = []
    for g in (4, 8, 16):
        for tokens in (48, 128):
            sweep = bench(["grpo", "trl"], {**cfg, "G": g, "tokens": tokens}, 1, steps)
            row = {"G": g, "tokens": tokens,
                   **{f"{k}_s_per_step": sweep[k]["s_per_step_median"] for k in ("grpo", "trl")},
                   **{f"{k}_peak_rss_mb": sweep[k]["peak_rss_mb"] for k in ("grpo", "trl")}}
            rows.append(row)
            print(f"scaling G={g:>2} tokens={tokens:>3}: ours {row['grpo_s_per_step']:.2f} s "
                  f"({row['grpo_peak_rss_mb']:.0f} MB), TRL {row['trl_s_per_step']:.2f} s "
                  f"({row['trl_peak_rss_mb']:.0f} MB)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per trainer")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--G", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--scaling", action="store_true", help="also sweep G and completion length")
    parser.add_argument("--scaling-steps", type=int, default=2)
    parser.add_argument("--scaling-only", action="store_true",
                        help="add the sweep to an existing --out file instead of re-running the main comparison")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results.json"))
    parser.add_argument("--worker")
    parser.add_argument("--config")
    args = parser.parse_args()
    if args.worker:
        cfg = json.loads(args.config)
        run_trl(cfg) if args.worker == "trl" else run_ours(args.worker, cfg)
        return

    import torch

    torch.set_num_threads(args.threads)
    from grao_pipeline.alignment.hardware import bf16_supported

    machine = measure_peaks()
    precision = "bf16" if bf16_supported() else "fp32"
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch threads {machine['torch_threads']}; "
          f"AMX bf16 {machine['amx_bf16']}, AVX512-BF16 {machine['avx512_bf16']}")
    print(f"measured peaks: fp32 matmul {machine['fp32_gflops']:.0f} GFLOP/s, bf16 matmul "
          f"{machine['bf16_gflops']:.1f} GFLOP/s, memory bandwidth {machine['bandwidth_gbs']:.1f} GB/s")
    print(f"precision for every trainer: {precision} "
          f"({'native bf16' if precision == 'bf16' else 'no native bf16 on this CPU'})")
    cfg = {"G": args.G, "tokens": args.tokens, "threads": args.threads, "precision": precision}
    if args.scaling_only:
        out = json.loads(Path(args.out).read_text())
        out["scaling"] = scaling(cfg, args.scaling_steps)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        return
    result = bench(["grpo", "grao", "trl"], cfg, args.warmup, args.steps)

    from grao_pipeline.alignment.tokens import prompt_token_lengths

    policy = load_policy()
    prompt_tokens = prompt_token_lengths(policy.tokenizer, result["questions"])[0]
    floor = floors(result, machine, cfg, precision, prompt_tokens)
    from grao_pipeline.alignment.generation import build_sampler

    # What our trainers' sampler decodes with here (their decode_kernel is auto).
    decode_step = build_sampler(policy.model, "auto", 2 * args.G).why
    print(f"our decode step: {decode_step}")
    floor["generation_gemms_s"] = decode_gemms_s(policy.model, 2 * args.G, args.tokens, "auto")
    floor["generation_gemms_onednn_s"] = decode_gemms_s(policy.model, 2 * args.G, args.tokens, "off")
    del policy
    print(f"\nfloors: generation {floor['generation_s']:.2f} s ({args.tokens} decode steps x "
          f"{result['grpo']['n_params'] / 1e6:.0f}M params x {2 if precision == 'bf16' else 4} B / bandwidth), "
          f"update {floor['update_s']:.2f} s (6 N tokens / peak)")
    if floor["generation_gemms_s"] is not None:
        print(f"kernel reference: the GEMMs of those decode steps alone ({2 * args.G} rows) take "
              f"{floor['generation_gemms_s']:.2f} s = "
              f"{floor['generation_gemms_s'] / floor['generation_s']:.1f}x the generation floor with the "
              f"packing our trainers use, {floor['generation_gemms_onednn_s']:.2f} s with oneDNN's")
    header = f"{'trainer':<22}{'median':>8}{'min':>8}{'max':>8}{'gen':>8}{'score':>8}{'update':>8}{'tok/s':>8}{'gen/floor':>10}{'upd/floor':>10}{'RSS MB':>9}"
    print("\n" + header)
    names = {"trl": "TRL 1.16 GRPOTrainer", "grpo": "ours GRPO", "grao": "ours GRAO"}
    for kind in ("trl", "grpo", "grao"):
        r = result[kind]
        update_floor = floor["grao_update_s"] if kind == "grao" else floor["update_s"]
        r["generation_over_floor"] = r["generation_median"] / floor["generation_s"]
        r["update_over_floor"] = r["update_median"] / update_floor
        if floor["generation_gemms_s"] is not None:
            r["generation_over_gemms"] = r["generation_median"] / floor["generation_gemms_s"]
        print(f"{names[kind]:<22}{r['s_per_step_median']:>8.2f}{r['s_per_step_min']:>8.2f}"
              f"{r['s_per_step_max']:>8.2f}{r['generation_median']:>8.2f}{r['scoring_median']:>8.2f}"
              f"{r['update_median']:>8.2f}{r['tokens_per_s']:>8.1f}{r['generation_over_floor']:>10.1f}"
              f"{r['update_over_floor']:>10.1f}{r['peak_rss_mb']:>9.0f}")
    ratio = result["grpo"]["s_per_step_median"] / result["trl"]["s_per_step_median"]
    grao_ratio = result["grao"]["s_per_step_median"] / result["trl"]["s_per_step_median"]
    if floor["generation_gemms_s"] is not None:
        print("generation over its GEMMs alone: " + ", ".join(
            f"{names[k]} {result[k]['generation_over_gemms']:.1f}x" for k in ("trl", "grpo", "grao")))
    print(f"\nours GRPO / TRL = {ratio:.2f}x; ours GRAO / TRL GRPO = {grao_ratio:.2f}x")
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine,
           "precision": precision, "decode_step": decode_step, "config": {**cfg, "prompts": 2, "prompt_tokens": prompt_tokens,
                                              "warmup": args.warmup, "timed_steps": args.steps},
           "ours_s_per_step_median": result["grpo"]["s_per_step_median"],
           "ours_grao_s_per_step_median": result["grao"]["s_per_step_median"],
           "trl_s_per_step_median": result["trl"]["s_per_step_median"],
           "ours_peak_rss_mb": result["grpo"]["peak_rss_mb"],
           "ours_grao_peak_rss_mb": result["grao"]["peak_rss_mb"],
           "trl_peak_rss_mb": result["trl"]["peak_rss_mb"],
           "floors": floor, "trainers": {k: result[k] for k in ("trl", "grpo", "grao")},
           "questions": result["questions"]}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")  # kept if the sweep fails
    if args.scaling:
        out["scaling"] = scaling(cfg, args.scaling_steps)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
