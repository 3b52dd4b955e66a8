"""Data-parallel runs over ``torch.distributed`` (launched by ``torchrun``).

Every rank holds the same model (same seed, same updates) and walks the same global batch
order; rank r encodes its share of each global batch of B items, and the embeddings are
all-gathered so that the strategy sees exactly the global batch that one process with batch B
would see: the same anchors, the same pool, the same random draws (every rank draws from the
same generator, in the same order). Every rank then selects and computes the objective on the
gathered batch, so the memory-bank queue and the dynamic index are identical on every rank by
construction, and the loss equals one process's loss.

Gradients are exact: the gather's backward all-reduces the gradient of the (identical) loss
with respect to the gathered rows and keeps the local rows, and the parameters' gradients are
then averaged over ranks. Work a strategy does beyond the encoder (mining, the objective) is
repeated on every rank rather than split.

NOTE: batch-norm statistics stay per rank on the CPU (torch's SyncBatchNorm needs a GPU); on
CUDA the encoder's batch norms are converted to SyncBatchNorm, so they see the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    def span(self, b: int) -> tuple[int, int]:
        """Rank's rows [lo, hi) of a global batch of ``b`` items (the first b % world ranks
        take one more)."""
        base, extra = divmod(b, self.world)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)


def from_env() -> Dist | None:
    """The process group torchrun describes in the environment (WORLD_SIZE > 1), initialised
    (gloo on CPU, nccl on CUDA); None in a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return Dist(rank, dist.get_world_size(), local)


def _gather(x: Tensor, d: Dist, b: int) -> Tensor:
    """(b, ...): every rank's span of the global batch, in rank order (no gradients)."""
    spans = [Dist(r, d.world, 0).span(b) for r in range(d.world)]
    m = max(hi - lo for lo, hi in spans)  # all_gather wants equal sizes: pad to the largest
    pad = x.new_zeros((m - x.shape[0], *x.shape[1:]))
    parts = [torch.empty((m, *x.shape[1:]), dtype=x.dtype, device=x.device)
             for _ in range(d.world)]
    dist.all_gather(parts, torch.cat([x, pad]).contiguous())
    return torch.cat([p[:hi - lo] for p, (lo, hi) in zip(parts, spans, strict=True)])


class _GatherRows(torch.autograd.Function):
    """:func:`_gather`; backward: the all-reduced gradient of the local rows."""

    @staticmethod
    def forward(ctx, x: Tensor, d: Dist, b: int) -> Tensor:
        ctx.d, ctx.b = d, b
        return _gather(x, d, b)

    @staticmethod
    def backward(ctx, g: Tensor):
        g = g.contiguous().clone()
        dist.all_reduce(g)  # every rank's loss reaches every rank's rows
        lo, hi = ctx.d.span(ctx.b)
        return g[lo:hi], None, None


def gather_rows(x: Tensor, d: Dist, b: int) -> Tensor:
    """(b, ...) from each rank's (its span of b, ...), differentiable."""
    if not x.requires_grad:
        with torch.no_grad():
            return _gather(x, d, b)
    return _GatherRows.apply(x, d, b)


def average_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    """Average the parameters' gradients over ranks, in one flat all-reduce."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    i = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[i:i + n].view_as(g))
        i += n


def broadcast_module(module: torch.nn.Module, d: Dist, parameters: bool = True) -> None:
    """Rank 0's buffers (e.g. batch-norm running statistics) on every rank, and with
    ``parameters`` its parameters too (at the start; later they agree by construction)."""
    with torch.no_grad():
        for t in [*(module.parameters() if parameters else ()), *module.buffers()]:
            dist.broadcast(t.data, src=0)
