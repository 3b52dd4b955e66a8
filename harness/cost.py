"""Compute cost, recorded for every run whatever its budget kind (DESIGN.md's five categories),
plus wall-clock per phase, FLOPs and peak memory.

Counters are host integers derived from tensor shapes, so charging them costs no device sync.
Phase timing uses CUDA events on a GPU (read back at log intervals) and ``perf_counter`` on the
CPU.
"""

from __future__ import annotations

import contextlib
import copy
import resource
import sys
import time
from collections import defaultdict

import torch

PHASES = ("data", "forward_backward", "mining", "update", "eval")


class PhaseClock:
    """Wall-clock per phase. ``with clock.phase("mining"): ...``"""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = defaultdict(float)
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._pending.append((name, start, end))
        else:
            t = time.perf_counter()
            yield
            self.totals[name] += time.perf_counter() - t

    def resolve(self) -> dict[str, float]:
        """Seconds per phase so far (on a GPU this waits for the recorded events)."""
        if self._pending:
            self._pending[-1][2].synchronize()
            for name, s, e in self._pending:
                self.totals[name] += s.elapsed_time(e) / 1000.0
            self._pending.clear()
        return {p: self.totals.get(p, 0.0) for p in PHASES}


class CostMeter:
    """The five cost categories of DESIGN.md, as counts, and FLOPs derived from them.

    (a) ``trained_samples``: samples through the encoder with forward and backward (both views of
        every anchor, plus negatives a strategy encodes with gradients);
    (b) ``nograd_encodes``: samples encoded without gradients (momentum keys, index refresh);
    (c) ``mining_macs``: multiply-adds of similarity searches a strategy runs besides the loss;
    (d) ``state_bytes``: the largest state (bank, index, learned negatives) held between steps;
    (e) ``adversary_updates``: parameter-elements updated by an adversary or mixing step.

    FLOPs = trained * f_train + nograd * f_fwd + 2 * mining_macs + objective FLOPs, with
    ``f_train`` and ``f_fwd`` (per sample) measured once by torch's flop counter on a probe batch.
    """

    def __init__(self, f_train: float, f_fwd: float):
        self.f_train = f_train
        self.f_fwd = f_fwd
        self.trained_samples = 0
        self.nograd_encodes = 0
        self.mining_macs = 0
        self.state_bytes = 0
        self.adversary_updates = 0
        self.objective_flops = 0

    def flops(self) -> float:
        return (self.trained_samples * self.f_train + self.nograd_encodes * self.f_fwd
                + 2.0 * self.mining_macs + self.objective_flops)

    def as_dict(self) -> dict[str, float]:
        return {
            "cost_trained_samples": self.trained_samples,
            "cost_nograd_encodes": self.nograd_encodes,
            "cost_mining_macs": self.mining_macs,
            "cost_state_bytes": self.state_bytes,
            "cost_adversary_updates": self.adversary_updates,
            "flops": self.flops(),
            # the FLOPs by phase (they add up to flops)
            "flops_encoder_train": self.trained_samples * self.f_train,
            "flops_encoder_nograd": self.nograd_encodes * self.f_fwd,
            "flops_mining": 2.0 * self.mining_macs,
            "flops_objective": float(self.objective_flops),
        }


def probe_flops(encoder: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(forward+backward, forward) FLOPs per sample of ``encoder`` on the batch ``x``."""
    from torch.utils.flop_counter import FlopCounterMode

    n = x.shape[0]
    probe = copy.deepcopy(encoder).train()  # a copy: the run's BN statistics stay untouched
    with FlopCounterMode(display=False) as fc:
        probe(x).sum().backward()
    f_train = fc.get_total_flops() / n
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        probe(x)
    f_fwd = fc.get_total_flops() / n
    return f_train, f_fwd


def _status_kb(field: str) -> int | None:
    """A ``kB`` field of Linux's /proc/self/status (VmHWM, VmRSS), None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_host() -> bool:
    """Start this process's host-memory high-water mark again from its current size, so that a
    run's ``peak_mem_mb`` is its own peak and not that of an earlier run in the same process
    (Linux: writing 5 to /proc/self/clear_refs resets VmHWM). False where it cannot be reset:
    there the peak is the process's (``getrusage``), which :func:`peak_host_mb` says by reading
    the same source as before."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def peak_host_mb() -> float:
    """Peak resident set size of this process since the last :func:`reset_peak_host`, in MiB
    (Linux's VmHWM; elsewhere the process's lifetime peak from ``getrusage``)."""
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


def reset_peak_cuda(device: torch.device) -> None:
    """Start the CUDA allocator's high-water mark of ``device`` again (no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
