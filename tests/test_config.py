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


def test_a_suite_declares_its_own_strategy_defaults_below_the_users():
    cfg = build_config("bbc-news", "memory-bank")
    assert cfg.strategy_cfg.K == 256  # bbc-news's own default (the paper's 4,096 elsewhere)
    assert cfg.flat()["strategy.K"] == 256  # recorded with the run's config
    assert build_config("digits", "memory-bank").strategy_cfg.K == 4096
    assert build_config("bbc-news", "memory-bank",
                        sets={"strategy.K": "1024"}).strategy_cfg.K == 1024  # the user wins
    assert build_config("bbc-news", "mixing").strategy_cfg.warmup == 0.25
    # a pretrained encoder does not start collapsed: no warm-up declared for it
    assert build_config("bbc-news", "mixing",
                        sets={"suite.encoder": "minilm"}).strategy_cfg.warmup == 0.0
    assert build_config("bbc-news", "simans").strategy_cfg.warmup == 0.5
    assert build_config("bbc-news", "simans",
                        sets={"suite.encoder": "minilm"}).strategy_cfg.warmup == 0.0
    assert build_config("digits", "simans").strategy_cfg.warmup == 0.0
