"""GRAO inside TRL: ``GRAOTrainer`` is TRL 1.16's ``GRPOTrainer`` with three changes.

1. The dataset's reference answer (column ``reference_column``) joins each group as
   member G+1;
2. it is scored by the same reward functions, through TRL's own ``_calculate_rewards``;
3. the loss is ``alignment.losses.grao_loss`` on ``alignment.advantages.group_advantages``
   over {o_1..o_G, y} (docs/method.md).

Everything else is TRL's: generation (HF or vLLM, or a ``rollout_func``), accelerate and
DeepSpeed, peft, logging, checkpoints. So a TRL user writes

    trainer = GRAOTrainer(model=..., reward_funcs=[...], args=GRAOConfig(...),
                          train_dataset=dataset_with_prompt_and_reference)
    trainer.train()

Simplifications, stated once:
- The loss is written per row: GRAO's objective is a mean over prompts of a mean over
  the G samples, and every term is linear in the rows, so each of the B·G rows carries
  its group's y and Â_y and the loss is the mean over rows. TRL may then shuffle and
  split the generation batch freely. As a cost, each row scores and forwards its
  group's y (G times per group); deterministic rewards score them identically.
- On-policy only (``num_iterations = 1``, no ratio), as the paper; TRL's ``beta`` stays
  what it is in TRL, the coefficient of a k3 KL to the reference model (called the
  start policy in this project), added as in our trainer. GRAO's β and λ are
  ``grao_beta`` and ``grao_lambda``.
- Rewards combine by TRL's ``sum_then_normalize`` weights; group statistics follow
  GRAO (population std, ``adv_eps``, a zero-variance group gets Â = 0), not TRL's.

Tested against TRL 1.16.0 (pinned in requirements.txt).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import is_conversational

from grao_pipeline.alignment.advantages import group_advantages
from grao_pipeline.alignment.losses import grao_loss, k3_kl
from grao_pipeline.alignment.tokens import encode_completions


@dataclass
class GRAOConfig(GRPOConfig):
    """TRL's ``GRPOConfig`` plus GRAO's own settings."""

    grao_beta: float = field(default=0.5, metadata={"help": "GRAO's β: weight of the imitation term Â_y·ℓ(y)."})
    grao_lambda: float = field(default=0.6, metadata={
        "help": "GRAO's λ: weight of the alignment regulariser Â_i·(ℓ(o_i) − ℓ(y))."})
    exploration: bool = field(default=True, metadata={"help": "False drops Â_i·ℓ(o_i) (ablation)."})
    include_reference_in_group: bool = field(default=True, metadata={
        "help": "Whether y's reward joins the group mean and std."})
    adv_eps: float = field(default=1e-4, metadata={"help": "Added to the group std."})
    reference_column: str = field(default="reference", metadata={
        "help": "Dataset column holding the reference answer y (text)."})

    def __post_init__(self):
        super().__post_init__()
        problems = []
        if self.num_iterations != 1:
            problems.append(f"num_iterations = {self.num_iterations}: GRAO here is on-policy, use 1")
        if self.multi_objective_aggregation != "sum_then_normalize":
            problems.append(f"multi_objective_aggregation = {self.multi_objective_aggregation!r}: "
                            "GRAO normalises the summed reward within groups; use 'sum_then_normalize'")
        if self.steps_per_generation != self.gradient_accumulation_steps:
            problems.append(f"steps_per_generation = {self.steps_per_generation} must equal "
                            f"gradient_accumulation_steps = {self.gradient_accumulation_steps}, so that "
                            "one optimiser step averages the whole generation batch")
        if self.grao_beta < 0 or self.grao_lambda < 0 or self.adv_eps <= 0:
            problems.append(f"grao_beta = {self.grao_beta}, grao_lambda = {self.grao_lambda} must be "
                            f">= 0 and adv_eps = {self.adv_eps} > 0")
        if problems:
            raise ValueError("GRAOConfig: " + "; ".join(problems))


class GRAOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with the reference answer in the group and GRAO's loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, GRAOConfig):
            raise TypeError(f"GRAOTrainer needs args=GRAOConfig(...), got {type(self.args).__name__}")

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _summed(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        return (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)

    def _generate_and_score_completions(self, inputs):
        args, device = self.args, self.accelerator.device
        if args.reference_column not in inputs[0]:
            raise KeyError(f"GRAOTrainer: the dataset has no {args.reference_column!r} column "
                           f"(GRAOConfig.reference_column); it has {sorted(inputs[0])}")
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        g = self.num_generations if mode == "train" else self.num_generations_eval
        sample_rewards = self._summed(self._last_rewards_per_func)          # [N_all]

        references = [x[args.reference_column] for x in inputs]
        reference_ids, reference_mask = encode_completions(
            self._tokenizer, references, args.max_completion_length, self._tokenizer.eos_token_id)
        reference_texts = ([[{"role": "assistant", "content": y}] for y in references]
                           if is_conversational(inputs[0]) else references)
        ids_list = [ids[mask.bool()].tolist() for ids, mask in zip(reference_ids, reference_mask, strict=True)]
        reference_rewards = self._summed(self._calculate_rewards(
            inputs, [x["prompt"] for x in inputs], reference_texts, ids_list))  # [N_all]

        groups = reference_rewards.view(-1, g)
        if not torch.equal(groups, groups[:, :1].expand_as(groups)):
            raise ValueError("GRAOTrainer: rows of one group scored their shared reference "
                             "differently; the reward functions must be deterministic")
        adv = group_advantages(sample_rewards.view(-1, g), groups[:, 0],
                               args.include_reference_in_group, args.adv_eps)
        rank = self.accelerator.process_index
        local = slice(rank * len(inputs), (rank + 1) * len(inputs))
        output["advantages"] = adv.samples.reshape(-1)[local].to(device)
        output["reference_advantages"] = adv.reference.repeat_interleave(g)[local].to(device)
        output["reference_ids"] = reference_ids.to(device)
        output["reference_mask"] = reference_mask.to(device)
        self._metrics[mode]["grao/reward_reference"].append(groups[:, 0].mean().item())
        self._metrics[mode]["grao/frac_group_zero_std"].append(adv.frac_reward_zero_std)
        self._metrics[mode]["grao/frac_reference_advantage_negative"].append(
            float((adv.reference < 0).float().mean()))
        return output

    def _logps(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask):
        logps, _, _ = self._get_per_token_logps_and_entropies(
            model, torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1), completion_ids.size(1))
        return logps

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        sample_mask = inputs["completion_mask"]
        sample_logps = self._logps(model, prompt_ids, prompt_mask, inputs["completion_ids"], sample_mask)
        reference_logps = self._logps(model, prompt_ids, prompt_mask, inputs["reference_ids"],
                                      inputs["reference_mask"])
        kl = (k3_kl(sample_logps, inputs["ref_per_token_logps"])[:, None]
              if self.beta != 0.0 else None)
        # each row a group of one sample: the mean over rows is GRAO's mean over prompts and samples
        loss, metrics = grao_loss(
            sample_logps[:, None], sample_mask[:, None], reference_logps, inputs["reference_mask"],
            inputs["advantages"][:, None], inputs["reference_advantages"],
            beta=self.args.grao_beta, lam=self.args.grao_lambda, exploration=self.args.exploration,
            kl_per_token=kl, kl_coef=self.beta)
        for name, value in metrics.items():
            self._metrics[mode][f"grao/{name}"].append(value)
        # TRL switches off HF's scaling for gradient accumulation and scales losses itself
        return loss / (self.current_gradient_accumulation_steps if mode == "train" else 1.0)
