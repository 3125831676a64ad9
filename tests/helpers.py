"""Rewards and configs shared by the tests."""


def length_reward(prompts, completions, references, **columns):
    """Longer answers score higher: gives every group reward variance on a random model."""
    return [float(len(c)) for c in completions]


def half_nan_reward(prompts, completions, references, **columns):
    """Every other score is NaN: must be refused, never averaged or counted as a tie."""
    return [float("nan") if i % 2 else 1.0 for i in range(len(completions))]


def none_reward(prompts, completions, references, **columns):
    return None


def short_reward(prompts, completions, references, **columns):
    return [1.0] * (len(completions) - 1)


def text_reward(prompts, completions, references, **columns):
    return ["good"] * len(completions)


def echo_penalty(prompts, completions, references, **columns):
    """-1 for an answer that is an echo of its question, else 0 (a held-out scorer)."""
    from grao_pipeline.alignment.diagnostics import echoes

    return [-e for e in echoes(prompts, completions).tolist()]
