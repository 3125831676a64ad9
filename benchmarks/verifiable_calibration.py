"""Calibration of the verifiable task: how often a starting policy solves held-out
problems (greedy), and how many G-sample groups would be all-fail or all-pass.

    .venv/bin/kedro run --env verifiable --pipelines data_processing
    .venv/bin/python benchmarks/verifiable_calibration.py [model_dir] [G]

Prints the machine, greedy accuracy with a 95% bootstrap interval, and, from G
samples at temperature 0.7 per problem, the share of groups with no reward variance.
"""

import sys
import time

import datasets
import torch

from grao_pipeline.alignment.config import EvalConfig
from grao_pipeline.alignment.evaluation import answer_prompts
from grao_pipeline.alignment.generation import Sampler
from grao_pipeline.alignment.hardware import cpu_name
from grao_pipeline.alignment.metrics import bootstrap_ci
from grao_pipeline.alignment.models import load_model
from grao_pipeline.alignment.rewards.verifiable import exact_answer_reward
from grao_pipeline.alignment.tokens import encode_prompts

model_dir = sys.argv[1] if len(sys.argv) > 1 else "data/06_models/base"
g = int(sys.argv[2]) if len(sys.argv) > 2 else 4
torch.set_num_threads(2)
print(f"machine: {cpu_name()}, torch {torch.__version__}, "
      f"{torch.get_num_threads()} threads; model {model_dir}")
policy = load_model(model_dir)
test = datasets.load_from_disk("data/05_model_input/test")
reward = exact_answer_reward()
t = time.perf_counter()
answers = answer_prompts(policy, test, EvalConfig(num_prompts=len(test), max_new_tokens=16, batch_size=32))
correct = reward(list(answers["prompt"]), list(answers["completion"]), list(answers["reference"]),
                 answer=list(answers["answer"]))
ci = bootstrap_ci(correct, 1000)
print(f"greedy accuracy on {len(test)} held-out problems: {ci['value']:.3f} "
      f"[{ci['ci_low']:.3f}, {ci['ci_high']:.3f}] ({time.perf_counter() - t:.0f} s)")
torch.manual_seed(0)
rows = test.to_list()
zero_var = all_fail = 0
for start in range(0, len(rows), 16):
    chunk = rows[start:start + 16]
    encoded = encode_prompts(policy.tokenizer, [r["prompt"] for r in chunk])
    samples = Sampler.around(policy.model).sample(policy.tokenizer, encoded, g, 16, 0.7)
    scores = torch.tensor(reward([r["prompt"] for r in chunk for _ in range(g)], samples.texts,
                                 [r["reference"] for r in chunk for _ in range(g)],
                                 answer=[r["answer"] for r in chunk for _ in range(g)])).view(-1, g)
    zero_var += int((scores.std(1) == 0).sum())
    all_fail += int((scores.sum(1) == 0).sum())
print(f"G={g}, temperature 0.7: groups with no reward variance {zero_var / len(rows):.2f} "
      f"(all-fail {all_fail / len(rows):.2f})")
