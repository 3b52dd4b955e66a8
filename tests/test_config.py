"""Config values: a float knob must be finite where infinity means nothing."""

from __future__ import annotations

import dataclasses
import math

import pytest

from negbench.harness.cli import main
from negbench.harness.config import ConfigError, apply_overrides, build_config

BASE = ["run", "--suite", "digits", "--strategy", "in-batch", "--no-progress"]


@pytest.mark.parametrize("key,value", [
    ("objective.temperature", "inf"), ("objective.temperature", "nan"),
    ("optim.lr", "inf"), ("optim.weight_decay", "-inf"), ("strategy.tau_plus", "nan"),
])
def test_non_finite_floats_are_rejected(key, value):
    strategy = "debiased" if key.startswith("strategy.") else "in-batch"
    with pytest.raises(ConfigError, match="must be a finite number"):
        build_config("digits", strategy, sets={key: value})


def test_infinite_temperature_on_the_command_line_is_one_line(capsys):
    assert main(BASE + ["--set", "objective.temperature=inf"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "objective.temperature" in lines[0], err
    assert "Traceback" not in err


def test_a_field_may_declare_that_infinity_means_something():
    @dataclasses.dataclass(frozen=True)
    class Window:
        high: float = dataclasses.field(default=1.0, metadata={"allow_inf": True})
        low: float = 0.0

    assert math.isinf(apply_overrides(Window(), {"high": "inf"}, "w").high)
    with pytest.raises(ConfigError):
        apply_overrides(Window(), {"low": "inf"}, "w")
    with pytest.raises(ConfigError):  # NaN never is a value
        apply_overrides(Window(), {"high": "nan"}, "w")
