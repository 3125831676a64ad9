"""check_types: every field checked by its annotation, the declared Range included."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import pytest

from grao_pipeline.alignment.config import ConfigError, Range, TrainConfig, check_types
from grao_pipeline.alignment.methods.grao import GRAOMethodConfig
from grao_pipeline.alignment.methods.sft import SFTConfig


@dataclass
class Probe:
    count: Annotated[int, Range(ge=1)] = 1
    share: Annotated[float, Range(gt=0, le=1)] = 0.5
    limit: Annotated[float, Range(gt=0)] | None = None
    mode: Literal["a", "b"] = "a"

    def __post_init__(self) -> None:
        check_types(self)


@pytest.mark.parametrize("change, message", [
    ({"count": 0}, "Probe.count = 0: must be >= 1"),
    ({"share": 0.0}, "Probe.share = 0.0: must be in (0, 1]"),
    ({"share": 1.5}, "Probe.share = 1.5: must be in (0, 1]"),
    ({"limit": -1.0}, "Probe.limit = -1.0: must be > 0"),
    ({"count": 1.5}, "Probe.count = 1.5: must be int, not float"),  # the type before the range
    ({"mode": "c"}, "Probe.mode = 'c': must be one of 'a', 'b'"),
])
def test_a_value_outside_its_declared_range_or_type_is_refused_naming_it(change, message):
    with pytest.raises(ConfigError) as err:
        Probe(**change)
    assert str(err.value) == message


def test_bounds_hold_at_their_edges_and_an_optional_field_may_be_none():
    Probe(count=1, share=1.0, limit=None)
    Probe(limit=1e-9)


def test_the_method_configs_inherit_the_shared_ranges():
    with pytest.raises(ConfigError, match=r"^GRAOMethodConfig\.learning_rate = 0\.0: must be > 0$"):
        GRAOMethodConfig(learning_rate=0.0)
    with pytest.raises(ConfigError, match=r"^GRAOMethodConfig\.lam = -0\.1: must be >= 0$"):
        GRAOMethodConfig(lam=-0.1)


@pytest.mark.parametrize("cls, field, size", [(SFTConfig, "batch_size", 6),
                                               (GRAOMethodConfig, "prompts_per_step", 6)])
def test_gradient_chunks_must_divide_the_rows_of_a_step(cls, field, size):
    with pytest.raises(ConfigError, match=rf"grad_accum_chunks = 4: must divide {field}"):
        cls(**{field: size}, grad_accum_chunks=4)
    assert cls(**{field: size}, grad_accum_chunks=3).grad_accum_chunks == 3
    assert TrainConfig.batch_field == ""


def test_an_optional_bounded_field_names_its_plain_type():
    with pytest.raises(ConfigError, match=r"^Probe\.limit = 'x': must be float \| None, not str$"):
        Probe(limit="x")
