"""Rewards and configs shared by the tests."""


def length_reward(prompts, completions, references, **columns):
    """Longer answers score higher: gives every group reward variance on a random model."""
    return [float(len(c)) for c in completions]
