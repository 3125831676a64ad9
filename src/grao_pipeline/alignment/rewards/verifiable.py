"""A verifiable task with controlled reference noise, and its reward.

``arithmetic_problems`` generates "What is a + b? Answer with the number only." problems,
seeded, with nothing downloaded. Each row has the ``answer`` (the ground truth), the
``reference`` (the demonstration y) and ``reference_is_wrong``: a ``reference_error_rate``
share of references are wrong but plausible (the true sum moved by 1 to 10, or two
digits swapped), so they look like a careless demonstrator, not like noise.

``exact_answer`` scores a completion 1/0 by the last integer in it against the
``answer`` column, never against the reference, so a wrong y never grades the model;
``format_bonus`` adds a little for an answer that is the number alone.

``VARIANTS`` are the task variants of the comparison protocol (docs/comparing.md), one
claim each; ``kedro run --env verifiable --params variant=v1`` picks one.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

from grao_pipeline.alignment.rewards.registry import RewardFn, register_reward

_INTEGER = re.compile(r"-?\d+")
PROMPT = "What is {expression}? Answer with the number only."
ReferenceFormat = Literal["number", "equation"]


@dataclass(frozen=True)
class Variant:
    """One variant of the verifiable task: how its data is made and how it is scored."""

    claim: str
    """What it tests."""
    reference_format: ReferenceFormat = "equation"
    """y as the bare sum ("52") or as the base model writes it ("18 + 34 = 52")."""
    reference_error_rate: float = 0.0
    """Share of references that are wrong (the equation's result, or the bare number)."""
    format_bonus: float = 0.0
    """``exact_answer``'s bonus for a correct answer that is the number alone."""
    digits: int = 2
    operands: int = 2


VARIANTS = {
    "v0": Variant("the old task, kept with its confound named: y is the bare number, so "
                  "imitating y forces a change of format", reference_format="number"),
    "v1": Variant("clean: y correct and in the model's own format"),
    "v2": Variant("robustness: 30% of y wrong, in the same format", reference_error_rate=0.3),
    "v3": Variant("transcend: y correct but sub-optimal, since the reward pays a bonus for "
                  "the bare number and y is an equation, so samples can score above y",
                  format_bonus=0.5),
    "v4": Variant("sparse reward: three operands, where the base model's greedy accuracy "
                  "is at most 3%, so GRPO's groups are almost all without variance",
                  operands=3),
}


def variant(name: str) -> Variant:
    """The named variant, or an error that lists them."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"variant {name!r}: the verifiable task has "
                         + "; ".join(f"{k} ({v.claim.split(':')[0]})" for k, v in VARIANTS.items())) from None


def variant_setting(field: str, name: str, reference_error_rate: float | None = None):
    """What the configuration reads from a variant (a config resolver,
    ``${verifiable:<field>,<variant>,<rate>}``): ``root`` is its data folder under
    data/verifiable/ (v0 keeps the old ``noise_<rate>``; another variant at a rate not
    its own gets ``_noise_<rate>``), any other field is the variant's own."""
    v = variant(name)
    if field != "root":
        return getattr(v, field)
    if name == "v0":
        return f"noise_{float(reference_error_rate or 0.0)}"
    own = reference_error_rate is None or float(reference_error_rate) == v.reference_error_rate
    return name if own else f"{name}_noise_{float(reference_error_rate)}"


def _plausibly_wrong(value: int, rng: random.Random) -> int:
    text = str(value)
    if len(text) >= 2 and rng.random() < 0.5:
        i = rng.randrange(len(text) - 1)
        swapped = text[:i] + text[i + 1] + text[i] + text[i + 2:]
        if swapped != text and not swapped.startswith("0"):  # "90" -> "09" would drop a digit
            return int(swapped)
    return value + rng.choice([-1, 1]) * rng.randint(1, 10)


def arithmetic_problems(num_rows: int, digits: int = 2, operands: int = 2,
                        reference_error_rate: float = 0.0, seed: int = 0,
                        reference_format: ReferenceFormat = "number") -> list[dict]:
    """``num_rows`` distinct addition problems of ``operands`` numbers with ``digits``
    digits each; y is the sum alone or, with ``reference_format="equation"``, the sum
    written out ("18 + 34 = 52"), a wrong y being wrong in its result."""
    if reference_format not in ("number", "equation"):
        raise ValueError(f"reference_format = {reference_format!r}: 'number' or 'equation'")
    if not 0.0 <= reference_error_rate < 1.0:
        raise ValueError(f"reference_error_rate = {reference_error_rate}: must be in [0, 1)")
    if digits < 1 or operands < 2:
        raise ValueError(f"digits = {digits}, operands = {operands}: need digits >= 1, operands >= 2")
    low, high = 10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1
    if num_rows > (high - low + 1) ** operands:
        raise ValueError(f"{num_rows} distinct problems do not exist with digits={digits}, operands={operands}")
    # Separate streams: the problems (and so the splits) are the same at every noise
    # level, and only the references differ, so levels compare like for like.
    rng, noise_rng = random.Random(seed), random.Random(f"{seed}/reference-noise")
    rows, seen = [], set()
    while len(rows) < num_rows:
        numbers = tuple(rng.randint(low, high) for _ in range(operands))
        if numbers in seen:
            continue
        seen.add(numbers)
        answer = sum(numbers)
        wrong = noise_rng.random() < reference_error_rate
        reference = _plausibly_wrong(answer, noise_rng) if wrong else answer
        expression = " + ".join(map(str, numbers))
        rows.append({"prompt": PROMPT.format(expression=expression),
                     "reference": str(reference) if reference_format == "number" else f"{expression} = {reference}",
                     "answer": str(answer), "reference_is_wrong": wrong})
    return rows


def final_integer(text: str) -> str | None:
    """The last integer in ``text``, or None."""
    found = _INTEGER.findall(text.replace(",", ""))
    return found[-1] if found else None


@register_reward("exact_answer", factory=True)
def exact_answer_reward(format_bonus: float = 0.0) -> RewardFn:
    """1 if the completion's last integer equals the ``answer`` column, else 0; plus
    ``format_bonus`` when the completion is that number alone."""

    def exact_answer(prompts, completions, references, answer=None, **columns):
        if answer is None:
            raise KeyError("exact_answer needs an 'answer' column (data_processing.columns.answer)")
        scores = []
        for completion, truth in zip(completions, answer, strict=True):
            parsed = final_integer(completion)
            correct = parsed is not None and int(parsed) == int(truth)
            bare = completion.strip().rstrip(".") == str(truth)
            scores.append(float(correct) + (format_bonus if correct and bare else 0.0))
        return scores

    return exact_answer
