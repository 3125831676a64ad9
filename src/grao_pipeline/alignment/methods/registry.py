"""The method registry: one name -> (config class, builder) per method.

A method is one module that defines its config, a ``Method`` (see ``trainer.Method``)
and registers them; its parameters live in ``conf/base/parameters_<name>.yml``:

    register_method(MethodSpec("grao", GRAOMethodConfig, build_grao))

Every consumer reads this registry: the Kedro pipelines (``kedro run --pipelines
<name>``), ``compare``, parameter validation, tuning and the tests. Variants are entries
too, never special cases:

- an ablation reuses another entry's parameters section with fields overridden
  (``MethodSpec("grao_no_imitation", ..., params="grao", overrides={"beta": 0.0})``);
- a sequential recipe names the entries it runs in order (``phases=("sft_continued",
  "grpo")``), each phase starting from the policy the previous one left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from grao_pipeline.alignment.config import ConfigError, RolloutConfig, TrainConfig

# (tokenizer, reward or None, config, model) -> Method
Builder = Callable[[Any, Any, TrainConfig, Any], Any]


@dataclass(frozen=True)
class MethodSpec:
    """One registered method (or recipe of methods)."""

    name: str
    """Registry key, Kedro pipeline name and prefix of its catalog entries."""
    config_cls: type[TrainConfig] | None = None
    """Typed config its parameters section validates into (for a recipe: None, or a
    ``RecipeConfig`` that splits the steps between its phases)."""
    build: Builder | None = None
    """(tokenizer, reward, config, model) -> Method (None for a recipe)."""
    params: str | None = None
    """Parameters section it reads (``params:<section>``); default: its own name. A
    recipe with a ``config_cls`` (``RecipeConfig``) reads one too, for its own settings."""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """Fields replaced in that section: how an ablation differs from its parent."""
    phases: tuple[str, ...] = ()
    """A recipe: registered methods run one after another."""
    uses_reward: bool = True
    """False for methods that never score anything (SFT)."""
    fit_budget: Callable[[TrainConfig, int], TrainConfig] | None = None
    """Fits the config to a generated-sample budget in ``compare`` (DPO's pair count);
    None: the config already spends it (checked for on-policy methods)."""
    title: Callable[[TrainConfig], str] | None = None
    """Title of the training-curve figure."""

    def __post_init__(self) -> None:
        if self.phases and self.build:
            raise ValueError(f"method {self.name!r}: a recipe (phases) has no builder")
        if not self.phases and not (self.config_cls and self.build):
            raise ValueError(f"method {self.name!r} needs a config class and a builder")
        if self.overrides and self.config_cls:
            known = {f.name for f in dataclasses.fields(self.config_cls)}
            unknown = sorted(set(self.overrides) - known)
            if unknown:
                raise ValueError(f"method {self.name!r} overrides unknown fields {unknown}")

    @property
    def section(self) -> str:
        return self.params or self.name

    @property
    def on_policy(self) -> bool:
        return self.config_cls is not None and issubclass(self.config_cls, RolloutConfig)

    def config(self, section: TrainConfig | Mapping[str, Any]) -> TrainConfig:
        """This method's config from its parameters section (a dict or a validated config),
        with its overrides applied."""
        if isinstance(section, Mapping):
            section = self.config_cls(**section)
        elif not isinstance(section, self.config_cls):
            raise ConfigError(f"params:{self.section} must be a {self.config_cls.__name__}, "
                              f"got {type(section).__name__}")
        return dataclasses.replace(section, **self.overrides) if self.overrides else section

    def describe(self, cfg: TrainConfig) -> str:
        return self.title(cfg) if self.title else self.name


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add ``spec`` to the registry (``replace=True`` to redefine a name)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered: {registered_methods()}") from None


def registered_methods() -> list[str]:
    return list(_REGISTRY)


def phase_specs(name: str) -> list[MethodSpec]:
    """The single-method entries that ``name`` runs, in order (itself if not a recipe)."""
    spec = get_method(name)
    if not spec.phases:
        return [spec]
    phases = [get_method(p) for p in spec.phases]  # resolved lazily: any registration order
    nested = [p.name for p in phases if p.phases]
    if nested:
        raise ValueError(f"recipe {name!r}: phases {nested} are themselves recipes")
    return phases


def parameter_sections(name: str) -> dict[str, type[TrainConfig]]:
    """``params:`` sections that ``name`` reads -> the config class each validates into:
    a recipe's own section (if it has one) first, then its phases'."""
    spec = get_method(name)
    own = {spec.section: spec.config_cls} if spec.phases and spec.config_cls else {}
    return {**own, **{s.section: s.config_cls for s in phase_specs(name)}}


def uses_reward(name: str) -> bool:
    return any(s.uses_reward for s in phase_specs(name))
