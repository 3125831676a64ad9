"""Run ``kedro <args>`` with a fault injected at one point: ``python kill_at.py POINT kedro-args…``.

POINT is one of:
- ``mid-step``: SIGKILL inside the third GRAO loss computation (step 3);
- ``sigterm-mid-step``: SIGTERM at the same place (the trainer should finish the step,
  checkpoint and stop);
- ``mid-checkpoint-write``: SIGKILL inside the second checkpoint write, after the
  weights are written and half of the model file is cut off, before the trainer state;
- ``mid-model-save``: SIGKILL while the trained GRAO model is saved, after its weights
  and before its tokenizer.
"""

import os
import signal
import sys
from pathlib import Path

import accelerate
import torch
from kedro.framework.cli import main

import grao_pipeline.io.datasets as model_io
from grao_pipeline.alignment.methods.grao import GRAOMethod

torch.set_num_threads(1)
point, sys.argv = sys.argv[1], ["kedro", *sys.argv[2:]]
calls = {"n": 0}


def nth_call(n: int) -> bool:
    calls["n"] += 1
    return calls["n"] == n


if point in ("mid-step", "sigterm-mid-step"):
    loss = GRAOMethod.loss
    sig = signal.SIGKILL if point == "mid-step" else signal.SIGTERM

    def loss_then_signal(self, model, batch):
        if nth_call(3):
            os.kill(os.getpid(), sig)
        return loss(self, model, batch)

    GRAOMethod.loss = loss_then_signal
elif point == "mid-checkpoint-write":
    save_state = accelerate.Accelerator.save_state

    def save_then_die(self, output_dir=None, **kwargs):
        save_state(self, output_dir, **kwargs)
        if nth_call(2):
            weights = Path(output_dir) / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
            os.kill(os.getpid(), signal.SIGKILL)

    accelerate.Accelerator.save_state = save_then_die
elif point == "mid-model-save":
    def weights_then_die(bundle, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        bundle.model.save_pretrained(path, safe_serialization=True)
        os.kill(os.getpid(), signal.SIGKILL)

    model_io.save_model = weights_then_die
else:
    raise SystemExit(f"unknown kill point {point!r}")

main()
