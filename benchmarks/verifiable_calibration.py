"""Calibration of the verifiable task: how often a starting policy solves a variant's
problems (greedy), and how many G-sample groups would be all-fail or all-pass.

    .venv/bin/python benchmarks/verifiable_calibration.py --variant v4 [--model data/06_models/base]
        [--problems 200] [--G 4]

The problems are the variant's own (alignment/rewards/verifiable.py VARIANTS), generated
with a seed that the training data does not use; scored by the variant's reward. Prints
the machine, greedy accuracy with a 95% bootstrap interval, what the answers look like,
and, from G samples at temperature 0.7 per problem, the share of groups with no reward
variance. Needs the base model: `kedro run --pipelines data_processing,sft` (or any
run that exports data/06_models/base) first.
"""

import argparse
import time

import datasets
import torch

from grao_pipeline.alignment.config import EvalConfig
from grao_pipeline.alignment.evaluation import answer_prompts
from grao_pipeline.alignment.generation import Sampler
from grao_pipeline.alignment.hardware import cpu_name
from grao_pipeline.alignment.metrics import bootstrap_ci
from grao_pipeline.alignment.models import load_model
from grao_pipeline.alignment.rewards.verifiable import (
    arithmetic_problems,
    exact_answer_reward,
    variant,
)
from grao_pipeline.alignment.tokens import encode_prompts

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--variant", default="v0")
parser.add_argument("--model", default="data/06_models/base")
parser.add_argument("--problems", type=int, default=200)
parser.add_argument("--G", type=int, default=4)
args = parser.parse_args()

torch.set_num_threads(2)
v = variant(args.variant)
print(f"machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
      f"model {args.model}; variant {args.variant}: {v.claim}")
policy = load_model(args.model)
test = datasets.Dataset.from_list(arithmetic_problems(
    args.problems, digits=v.digits, operands=v.operands, reference_error_rate=v.reference_error_rate,
    seed=12345, reference_format=v.reference_format))
reward = exact_answer_reward(format_bonus=v.format_bonus)
t = time.perf_counter()
answers = answer_prompts(policy, test, EvalConfig(num_prompts=len(test), max_new_tokens=16, batch_size=32))
scores = reward(list(answers["prompt"]), list(answers["completion"]), list(answers["reference"]),
                answer=list(answers["answer"]))
correct = [float(s >= 1.0) for s in scores]
ci = bootstrap_ci(correct, 1000)
print(f"greedy accuracy on {len(test)} problems: {ci['value']:.3f} "
      f"[{ci['ci_low']:.3f}, {ci['ci_high']:.3f}] ({time.perf_counter() - t:.0f} s)")
for row in answers.head(3).itertuples():
    print(f"  {row.prompt!r} -> {row.completion!r} (y: {row.reference!r})")
y_scores = reward(list(test["prompt"]), list(test["reference"]), list(test["reference"]),
                  answer=list(test["answer"]))
print(f"the references' mean reward: {sum(y_scores) / len(y_scores):.3f} "
      f"(the reward's maximum: {1.0 + v.format_bonus})")
torch.manual_seed(0)
rows = test.to_list()
zero_var = all_fail = 0
g = args.G
for start in range(0, len(rows), 16):
    chunk = rows[start:start + 16]
    encoded = encode_prompts(policy.tokenizer, [r["prompt"] for r in chunk])
    samples = Sampler.around(policy.model).sample(policy.tokenizer, encoded, g, 16, 0.7)
    group = torch.tensor(reward([r["prompt"] for r in chunk for _ in range(g)], samples.texts,
                                [r["reference"] for r in chunk for _ in range(g)],
                                answer=[r["answer"] for r in chunk for _ in range(g)])).view(-1, g)
    zero_var += int((group.std(1) == 0).sum())
    all_fail += int((group.sum(1) == 0).sum())
print(f"G={g}, temperature 0.7: groups with no reward variance {zero_var / len(rows):.2f} "
      f"(all-fail {all_fail / len(rows):.2f})")
