"""The training budget every run of an ablation spends identically, and the schedules that are
functions of the fraction of it spent.

Kinds: ``samples`` (trained anchors: steps x batch; the default), ``steps``, ``flops`` and
``seconds`` (training wall-clock, evaluation excluded). A run stops exactly when its budget is
spent: for ``samples`` the last batch is shrunk to the samples left, so every run of an ablation
sees the same number; for ``flops`` the last batch is shrunk to the FLOPs left at the last step's
cost per sample (so a run ends within one sample's FLOPs of the budget, unless a strategy's
periodic work, such as an index refresh, lands on the last step); ``seconds`` stops at the first
step boundary past the limit. Everything is host arithmetic: no device sync.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from negbench.harness.config import BudgetConfig, OptimConfig


class Budget:
    def __init__(self, cfg: BudgetConfig, batch_size: int,
                 sync: Callable[[], None] | None = None):
        """``sync``: waits for the device's queued work (``torch.cuda.synchronize``); a
        ``seconds`` budget calls it before reading the clock, so that it times the device's
        work rather than the host's queueing of it (one sync per step, for that kind only)."""
        self._sync = sync if cfg.kind == "seconds" else None
        self.kind = cfg.kind
        self.total = float(cfg.amount)
        self.batch_size = batch_size
        self.samples = 0
        self.steps = 0
        self.flops = 0.0
        self.seconds = 0.0
        self._flops_per_sample: float | None = None
        self._t0: float | None = None

    # -- where we are
    @property
    def spent(self) -> float:
        return {"samples": self.samples, "steps": self.steps, "flops": self.flops,
                "seconds": self.seconds}[self.kind]

    @property
    def fraction(self) -> float:
        """Fraction of the budget spent, in [0, 1]."""
        return min(1.0, self.spent / self.total)

    @property
    def done(self) -> bool:
        return self.next_batch_size() == 0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def next_batch_size(self) -> int:
        """Samples the next step trains on (<= batch size); 0 when the budget is spent."""
        b = self.batch_size
        if self.kind == "samples":
            return int(min(b, self.total - self.samples))
        if self.kind == "steps":
            return b if self.steps < self.total else 0
        if self.kind == "seconds":
            return b if self._elapsed() < self.total else 0
        left = self.total - self.flops  # flops
        if self._flops_per_sample is None:
            return b if left > 0 else 0
        n = int(min(b, math.floor(left / self._flops_per_sample)))
        return n if n >= 2 else 0  # a contrastive step needs two anchors

    def charge(self, samples: int, flops: float) -> None:
        """Account one finished step of ``samples`` trained anchors costing ``flops``."""
        self.samples += samples
        self.steps += 1
        self.flops += flops
        if samples:
            self._flops_per_sample = flops / samples
        self.seconds = self._elapsed()

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` just spent (an evaluation at a checkpoint) out of a ``seconds``
        budget."""
        if self._t0 is not None:
            self._t0 += seconds

    def _elapsed(self) -> float:
        if self._t0 is None:
            return 0.0
        if self._sync is not None:
            self._sync()
        return time.perf_counter() - self._t0


def learning_rate(cfg: OptimConfig, fraction: float) -> float:
    """Linear warm-up over ``cfg.warmup`` of the budget, then cosine decay to
    ``cfg.final_lr_ratio * lr`` at fraction 1 (exactly when the budget ends)."""
    f = min(max(fraction, 0.0), 1.0)
    if cfg.warmup > 0 and f < cfg.warmup:
        return cfg.lr * f / cfg.warmup
    progress = (f - cfg.warmup) / (1.0 - cfg.warmup)
    floor = cfg.lr * cfg.final_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
