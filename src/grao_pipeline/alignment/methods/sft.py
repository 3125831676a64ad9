"""SFT: length-normalised NLL of the reference answers y (the warm start, and the
"just imitate" baseline ``sft_continued``, which reads its own parameters section)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch

from grao_pipeline.alignment.config import Range, TrainConfig
from grao_pipeline.alignment.logprobs import token_logps
from grao_pipeline.alignment.losses import sft_loss
from grao_pipeline.alignment.methods.base import BaseMethod
from grao_pipeline.alignment.methods.registry import MethodSpec, register_method
from grao_pipeline.alignment.tokens import encode_completions, encode_prompts


@dataclass
class SFTConfig(TrainConfig):
    """SFT: length-normalised NLL of the reference answers."""

    batch_size: Annotated[int, Range(ge=1)] = 8
    """Rows per optimiser step."""
    batch_field: ClassVar[str] = "batch_size"


@dataclass
class AnswerBatch:
    """Prompts with one answer each. ``prompt_ids``/``prompt_mask``: [B, P];
    ``answer_ids``/``answer_mask``: [B, C]."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    answer_ids: torch.Tensor
    answer_mask: torch.Tensor


def encode_answers(tokenizer, prompts: list[str], answers: list[str],
                   max_tokens: int) -> AnswerBatch:
    """Chat-formatted prompts with their answers as EOS-terminated completions."""
    prompt = encode_prompts(tokenizer, prompts)
    ids, mask = encode_completions(tokenizer, answers, max_tokens, tokenizer.eos_token_id)
    return AnswerBatch(prompt.ids, prompt.mask, ids, mask)


class SFTMethod(BaseMethod):
    """Supervised fine-tuning on the reference answers."""

    name = "sft"
    reads_reference = True

    def __init__(self, tokenizer, cfg: SFTConfig):
        super().__init__()
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.rows_per_step = cfg.batch_size

    def prepare(self, model, rows: list[dict]) -> tuple[AnswerBatch, dict]:
        batch = encode_answers(self.tokenizer, [r["prompt"] for r in rows],
                               [r["reference"] for r in rows], self.cfg.max_completion_tokens)
        return batch, {"tokens": int(batch.answer_mask.sum())}

    def loss(self, model, batch: AnswerBatch) -> tuple[torch.Tensor, dict]:
        logps = token_logps(model, batch.prompt_ids, batch.prompt_mask,
                            batch.answer_ids, batch.answer_mask)
        return sft_loss(logps, batch.answer_mask)


def build_sft(tokenizer, reward, cfg: SFTConfig, model) -> SFTMethod:
    return SFTMethod(tokenizer, cfg)


register_method(MethodSpec("sft", SFTConfig, build_sft, uses_reward=False,
                           title=lambda cfg: "SFT warm start"))
register_method(MethodSpec("sft_continued", SFTConfig, build_sft, uses_reward=False,
                           title=lambda cfg: "SFT (continued)"))
