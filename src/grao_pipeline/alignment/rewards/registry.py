"""The reward registry: a name -> a factory building a batched reward function.

A reward is ``R(prompts, completions, references, **columns) -> list[float]``, one
finite number per completion. ``columns`` holds every dataset column beyond prompt and
reference (e.g. a ground-truth ``answer``), one value per completion, as TRL's
``reward_kwargs``, and ``finished`` (bool: the answer ended with EOS; always true for
references). Each reward has its own config block: ``weight`` plus the keyword options
its factory takes. This module imports no plug-in: ``rewards/__init__.py`` imports it
first, then the plug-ins, each of which registers itself here.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable

import torch

RewardFn = Callable[..., list[float]]
_FACTORIES: dict[str, Callable[..., RewardFn]] = {}


def _no_options(fn: RewardFn) -> Callable[..., RewardFn]:
    def factory(**options) -> RewardFn:
        if options:
            raise TypeError(f"takes no options, got {sorted(options)}")
        return fn

    return factory


def register_reward(name: str, *, factory: bool = False, replace: bool = False):
    """Register a reward under ``name``: a plain reward function, or (``factory=True``)
    a function ``(**options) -> RewardFn`` for rewards that load something first; its
    keyword arguments are the options of the reward's config block."""

    def decorator(fn):
        if name in _FACTORIES and not replace:
            raise ValueError(f"reward {name!r} is already registered")
        _FACTORIES[name] = fn if factory else _no_options(fn)
        return fn

    return decorator


def checked_scores(fn: RewardFn, prompts: list[str], completions: list[str],
                   references: list[str], columns: dict | None = None,
                   name: str | None = None) -> list[float]:
    """Call a reward and refuse what it returns unless it is one finite number per
    completion; the error names the reward."""
    label = name or getattr(fn, "__name__", type(fn).__name__)
    values = fn(prompts, completions, references, **(columns or {}))
    if values is None or isinstance(values, str | bytes) or not hasattr(values, "__len__"):
        raise ValueError(f"reward {label!r} returned {type(values).__name__}, "
                         f"not a list of {len(completions)} numbers")
    if len(values) != len(completions):
        raise ValueError(f"reward {label!r} returned {len(values)} scores "
                         f"for {len(completions)} completions")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real | torch.Tensor):
            raise ValueError(f"reward {label!r} returned {v!r} ({type(v).__name__}) for "
                             f"completion {i}: {completions[i][:60]!r}; expected a number")
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"reward {label!r} returned {v} for completion {i}: "
                             f"{completions[i][:60]!r}")
        out.append(v)
    return out


def registered_rewards() -> list[str]:
    return sorted(_FACTORIES)


def resolve_reward(name: str, options: dict | None = None) -> RewardFn:
    """A registered name, or ``"package.module:function"`` for a plain function, built
    with the options of its config block."""
    options = options or {}
    if name in _FACTORIES:
        factory = _FACTORIES[name]
    elif ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = _no_options(getattr(importlib.import_module(module_name), attr))
        except (ImportError, AttributeError) as err:
            raise ValueError(f"reward {name!r} cannot be imported: {err}") from err
    else:
        raise ValueError(f"unknown reward {name!r}; registered: {registered_rewards()}, "
                         "or give 'package.module:function'")
    try:
        return factory(**options)
    except TypeError as err:
        raise ValueError(f"rewards.components.{name}: bad options {options}: {err}") from err
