"""Train a tiny model for a few steps and save what a multi-process test compares.

Run with one process (``python tests/distributed/run_tiny.py ...``) or several
(``torchrun --nproc_per_node 2 tests/distributed/run_tiny.py ...``). With
``--completions fixed`` every prompt gets pre-drawn completions keyed by its text, so
1 and N processes see the same samples although their random streams differ. Rank 0
writes ``grads_step1.safetensors``, ``weights.safetensors`` and ``log.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from grao_pipeline.alignment.generation.sampling import Samples
from grao_pipeline.alignment.methods import get_method
from grao_pipeline.alignment.methods.grao import GRAOMethodConfig
from grao_pipeline.alignment.methods.grpo import GRPOConfig
from grao_pipeline.alignment.tokens import completion_mask, encode_completions
from grao_pipeline.alignment.trainer import train
from tests.fixtures import gpt2_tokenizer, tiny_model

PROMPTS = ["how are you?", "what is your dog called?", "do you like tea?", "where do you live?",
           "any plans this weekend?", "what music do you like?", "is it raining?", "cats or dogs?"]
WORDS = ["yes", "no", "maybe later", "I like it a lot", "not really, thanks", "ok"]


def length_reward(prompts, completions, references, **columns):
    return [float(len(c)) for c in completions]


def fixed_completions(model, tokenizer, encoded, prompts, num_generations, max_new_tokens, temperature):
    """G completions per prompt that depend only on the prompt's text."""
    texts = [WORDS[(sum(map(ord, p)) + g * 7) % len(WORDS)] for p in prompts for g in range(num_generations)]
    ids, _ = encode_completions(tokenizer, texts, max_new_tokens, tokenizer.eos_token_id)
    mask = completion_mask(ids, [tokenizer.eos_token_id])
    return Samples(ids, mask, texts, torch.zeros(len(texts), dtype=torch.bool))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=["grao", "grpo"], required=True)
    parser.add_argument("--completions", choices=["fixed", "sampled"], default="fixed")
    parser.add_argument("--aggregation", default="grpo")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)

    tokenizer = gpt2_tokenizer()
    model, _ = tiny_model(tokenizer, seed=0)
    common = dict(steps=args.steps, prompts_per_step=4, num_generations=3, max_completion_tokens=6,
                  learning_rate=1e-3, weight_decay=0.0, mixed_precision="fp32", show_progress=False,
                  temperature=1.0)
    cfg = (GRAOMethodConfig(**common) if args.method == "grao"
           else GRPOConfig(**common, kl_coef=0.04, aggregation=args.aggregation))
    method = get_method(args.method).build(tokenizer, length_reward, cfg, model)
    if args.completions == "fixed":
        method.sample_fn = fixed_completions
    rows = [{"prompt": p, "reference": "fine, thanks"} for p in PROMPTS]

    grads: dict[str, torch.Tensor] = {}

    def keep_first_gradients(step: int, row: dict) -> None:
        if step == 1:
            grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters()})

    result = train(model, method, rows, cfg, callbacks=[keep_first_gradients])
    if int(os.environ.get("RANK", "0")) == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        save_file(grads, out / "grads_step1.safetensors")
        save_file({n: p.detach().contiguous() for n, p in result.model.named_parameters()},
                  out / "weights.safetensors")
        (out / "log.json").write_text(json.dumps(
            {"world_size": int(os.environ.get("WORLD_SIZE", "1")), "log": result.log}))


if __name__ == "__main__":
    main()
