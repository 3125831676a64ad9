"""A verifiable task with controlled reference noise, and its reward.

``arithmetic_problems`` generates "What is a + b? Answer with the number only." problems,
seeded, with nothing downloaded. Each row has the ``answer`` (the ground truth), the
``reference`` (the demonstration y) and ``reference_is_wrong``: a ``reference_error_rate``
share of references are wrong but plausible (the true sum moved by 1 to 10, or two
digits swapped), so they look like a careless demonstrator, not like noise.

``exact_answer`` scores a completion 1/0 by the last integer in it against the
``answer`` column, never against the reference, so a wrong y never grades the model;
``format_bonus`` adds a little for an answer that is the number alone.
"""

from __future__ import annotations

import random
import re

from grao_pipeline.alignment.rewards.registry import RewardFn, register_reward

_INTEGER = re.compile(r"-?\d+")
PROMPT = "What is {expression}? Answer with the number only."


def _plausibly_wrong(value: int, rng: random.Random) -> int:
    text = str(value)
    if len(text) >= 2 and rng.random() < 0.5:
        i = rng.randrange(len(text) - 1)
        swapped = text[:i] + text[i + 1] + text[i] + text[i + 2:]
        if swapped != text and not swapped.startswith("0"):  # "90" -> "09" would drop a digit
            return int(swapped)
    return value + rng.choice([-1, 1]) * rng.randint(1, 10)


def arithmetic_problems(num_rows: int, digits: int = 2, operands: int = 2,
                        reference_error_rate: float = 0.0, seed: int = 0) -> list[dict]:
    """``num_rows`` distinct addition problems of ``operands`` numbers with ``digits``
    digits each."""
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
        rows.append({"prompt": PROMPT.format(expression=" + ".join(map(str, numbers))),
                     "reference": str(reference), "answer": str(answer), "reference_is_wrong": wrong})
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
