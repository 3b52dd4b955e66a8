"""Speed options (`speed.precision`, `speed.channels_last`, `speed.compile`): part of every
run's config and params, so that runs under one budget compare like with like, and working."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from negbench.harness.config import ConfigError, build_config, parse_budget
from negbench.harness.runner import Trainer, run


def test_speed_options_are_in_the_config_and_in_mlflow(tmp_path):
    cfg = build_config("digits", "in-batch", budget=parse_budget("samples=512"),
                       sets={"speed.precision": "bf16", "speed.channels_last": "true",
                             "batch_size": "128", "eval.linear_epochs": "5"})
    assert cfg.flat()["speed.precision"] == "bf16" and cfg.flat()["speed.channels_last"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = run(cfg, tracking_uri=uri, experiment="speed")
    assert r.metrics["samples_seen"] == 512 and 0 < r.metrics["knn_acc"] <= 1
    params = MlflowClient(tracking_uri=uri).get_run(r.run_id).data.params
    assert params["speed.precision"] == "bf16" and params["speed.channels_last"] == "True"
    assert params["speed.compile"] == "False"
    default = build_config("digits", "in-batch")
    assert default.speed.precision == "fp32" and not default.speed.channels_last


def test_bf16_runs_the_encoder_in_bfloat16_and_hands_float32_on():
    cfg = build_config("digits", "in-batch", sets={"speed.precision": "bf16"})
    t = Trainer(cfg)
    seen = []
    t.encoder.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    z = t._forward(t.encoder, t.suite.view(t.train_split.x[:8], t.gen))
    assert seen == [torch.bfloat16] and z.dtype == torch.float32


def test_channels_last_lays_out_the_cnn_that_way():
    t = Trainer(build_config("digits", "in-batch", sets={"speed.channels_last": "true"}))
    convs = [m for m in t.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last)
                         for c in convs)


def test_a_bad_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="speed.precision must be fp32 or bf16"):
        build_config("digits", "in-batch", sets={"speed.precision": "fp8"})


@pytest.mark.slow
def test_compile_trains_the_same_model():
    """torch.compile (inductor, a C++ compiler on CPU) against eager: the same losses."""
    losses = []
    for compiled in ("false", "true"):
        cfg = build_config("digits", "in-batch", budget=parse_budget("steps=3"),
                           sets={"speed.compile": compiled, "batch_size": "64"})
        t = Trainer(cfg)
        t.budget.start()
        out = []
        while (b := t.budget.next_batch_size()) > 0:
            t.step(b)
            out.append(float(t.last_loss))
        losses.append(out)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
