"""One run: a strategy trained on a suite under a budget, evaluated, and tracked.

The step (DESIGN.md), with no host sync inside it: the data stays on the device, views are made
there, meters accumulate there, and the host reads them back only every ``log_every`` steps.

Checkpoints (for tuning): :func:`run` can call a hook when the budget spent first reaches given
fractions (``checkpoints``, e.g. 0.25, 0.5, 0.75); the hook evaluates the encoder as it is there
(:meth:`Trainer.knn_accuracy`), returns metrics to log at that point of the history, and may end
the run early on purpose by raising :class:`RunStopped` (a pruned trial). Time spent in the hook
is evaluation: it counts neither in ``wall_seconds`` nor against a ``seconds`` budget.

A run evaluated on the validation split (``eval.split=val``, as tuning does) never holds the test
split: the trainer drops it after loading, so nothing in such a run can read it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from negbench import NegbenchError, strategies, suites
from negbench.harness import distributed, health
from negbench.harness.budget import Budget, learning_rate
from negbench.harness.config import ConfigError, RunConfig
from negbench.harness.cost import (
    CostMeter,
    PhaseClock,
    peak_host_mb,
    probe_flops,
    reset_peak_cuda,
    reset_peak_host,
)
from negbench.harness.evaluate import embed, evaluate_items, items_record, knn_top1
from negbench.harness.filters import apply_filter, filter_metrics
from negbench.harness.metrics import NegativeMeter
from negbench.harness.objectives import make_objective, objective_flops
from negbench.harness.tags import (
    DATA_TAG,
    FILTER_TAG,
    FLOOR_FROM_TAG,
    FLOOR_KEY_TAG,
    HEALTH_REASON_TAG,
    HEALTH_TAG,
    LABELS_TAG,
    ORACLE_TAG,
)
from negbench.harness.tracking import Tracker, run_tags
from negbench.strategies import Negatives, StepContext

HARD_NEGATIVE_ID = -1  # dataset id of a supervised hard negative: not a training item
# what the oracle labels give: left out of a run whose suite has none (SuiteData.labelled)
LABEL_METRICS = ("knn_acc", "linear_acc", "fnr", "fnr_weighted", "filter_precision",
                 "filter_recall")
NO_LABELS = "n/a: no labels"  # what tables print for them


class RunFailed(NegbenchError, RuntimeError):
    """A run that could not finish (diverged, broke the strategy contract, ...): exit status 1."""

    exit_code = 1


class RunStopped(Exception):
    """Raised by a checkpoint hook to end a run early on purpose (a pruned tuning trial).

    :func:`run` records it as no failure: it logs ``metrics`` at the point reached, sets ``tags``
    on the run, ends it KILLED (it did not spend its budget) with no ``failure`` tag, and raises
    it again to its caller."""

    def __init__(self, reason: str, tags: dict[str, str] | None = None,
                 metrics: dict[str, float] | None = None):
        super().__init__(reason)
        self.tags = dict(tags or {})
        self.metrics = dict(metrics or {})


def with_hard_negatives(negs: Negatives, h: torch.Tensor) -> Negatives:
    """``negs`` with one supervised hard negative per query anchor appended as an extra column.

    ``h`` (B, D) holds the encoded hard negatives of the batch's B instances (the suite's
    :meth:`~negbench.suites.Suite.hard_negative_view`, with gradients). The anchors whose positive
    is the second view are the query views: all A = B anchors of an asymmetric strategy, the
    first B of a symmetric one (A = 2B, anchors [q; k], the layout of
    :func:`negbench.strategies.kernels.in_batch_negatives`). Row i (and i + B) gets h_i; for the
    key-view anchors (rows B..2B) it is masked out (``extra_mask``), as in SimCSE, whose loss
    contrasts the contradiction with the premise only.

    The column joins any extras the strategy returned (:meth:`Negatives.append_extra`: weight 1
    where candidates are weighted, weighed by a tilt like any other, no label source). Its id is
    ``HARD_NEGATIVE_ID`` (-1: not a training item, so never an "own instance" nor a collision),
    so the false-negative meter counts it as a true negative: a contradiction is not a
    paraphrase of its premise."""
    a, b = negs.num_anchors, h.shape[0]
    dev = h.device
    if a == b:
        rows, query = h, None  # every anchor is a query view
    elif a == 2 * b:
        rows = torch.cat([h, h])  # (A, D)
        query = (torch.arange(a, device=dev) < b)[:, None]  # (A, 1)
    else:
        raise RunFailed(f"the strategy returned {a} anchors for a batch of {b}; a supervised "
                        "hard negative needs A = B (the query views) or A = 2B (query views "
                        "first)")
    col_ids = torch.full((a, 1), HARD_NEGATIVE_ID, dtype=torch.long, device=dev)  # (A, 1)
    return negs.append_extra(rows[:, None], col_ids, query)  # (A, 1, D), (A, 1), (A, 1) | None


@dataclass
class RunResult:
    config: RunConfig
    metrics: dict[str, float]
    run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    deciles: dict[str, list[float]] = field(default_factory=dict)
    health: str = ""  # the verdict: ok, degraded or collapsed (harness.health.verdict)
    health_reason: str = ""
    labelled: bool = True  # False: the suite has no labels, LABEL_METRICS are absent


# budget fractions at which a run's representation health joins its training curve
HEALTH_AT = (0.25, 0.5, 0.75)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device (try auto, cpu, cuda:0)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available")
    return dev


def device_label(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return dev.type


class Trainer:
    """Holds one run's state; :meth:`train` spends the budget, :meth:`finish` evaluates."""

    def __init__(self, cfg: RunConfig, data_dir: str | None = None):
        if cfg.budget.amount <= 0 or cfg.batch_size < 2:
            raise ConfigError("a run needs a positive budget and a batch size >= 2; build its "
                              "config with harness.config.build_config, which fills in the "
                              "suite's defaults")
        self.cfg = cfg
        reset_peak_host()  # this run's peak memory is its own, not an earlier run's
        self.dist = distributed.from_env()  # None in one process; see harness.distributed
        self.device = resolve_device(cfg.device)
        if self.dist is not None and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        reset_peak_cuda(self.device)
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.suite = suites.create(cfg.suite, cfg.suite_cfg, data_dir=data_dir)
        self.data = self.suite.load()
        if cfg.eval.split != "test":  # evaluated on val (tuning): the test split is not held
            self.data = dataclasses.replace(self.data, test=None)
        self.train_split = self.data.train.to(self.device)
        self.n_train = len(self.train_split)
        if cfg.batch_size > self.n_train:
            raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {self.n_train} training "
                              f"items of {cfg.suite}")
        self.encoder = self.suite.build_encoder().to(self.device)
        sp = cfg.speed
        self.bf16 = sp.precision == "bf16"
        if sp.channels_last:
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
        if self.dist is not None:
            if self.device.type == "cuda":  # batch norm over the global batch
                self.encoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.encoder)
            distributed.broadcast_module(self.encoder, self.dist)
        self.strategy = strategies.create(cfg.strategy, cfg.strategy_cfg,
                                          dim=self.encoder.out_dim,
                                          n_train=self.n_train).to(self.device)
        self.labelled = self.data.labelled
        if not self.labelled and (self.strategy.oracle or cfg.fn_filter == "oracle"):
            who = cfg.strategy if self.strategy.oracle else "the oracle filter"
            raise ConfigError(f"{who} reads the oracle labels, and {cfg.suite}'s data has none")
        m = self.strategy.key_momentum
        self.key_encoder = None
        if m is not None:
            self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.momentum = m
        # the training forward: compiled when asked (the same parameters as self.encoder)
        self.train_encoder = torch.compile(self.encoder) if sp.compile else self.encoder
        o = cfg.optim
        params = list(self.encoder.parameters())
        if o.name == "adamw":
            self.opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        else:
            self.opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                                       weight_decay=o.weight_decay)
        self.objective = make_objective(cfg.objective)
        probe_x = self.suite.prepare(self.train_split.x[: min(64, self.n_train)])
        self.cost = CostMeter(*probe_flops(self.encoder, probe_x))
        sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        self.budget = Budget(cfg.budget, cfg.batch_size, sync=sync)
        self.meter = NegativeMeter(self.train_split.y)
        # the false-negative filter's counts (harness.filters): removed, removed false
        # negatives, false negatives selected before it; summed on the device
        self.filter_counts = torch.zeros(3, dtype=torch.long, device=self.device)
        self.filter_anchors = 0  # a host count: shapes are known on the host
        self.clock = PhaseClock(self.device)
        self._perm = torch.randperm(self.n_train, generator=self.gen, device=self.device)
        self._pos = 0
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_steps = 0
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.checkpoint_seconds = 0.0  # time in checkpoint hooks: evaluation, not training
        self._last_log = (0, 0.0)  # (samples, seconds) at the last log
        self.lr = 0.0
        self.last_loss: torch.Tensor | None = None  # the last step's loss (on the device)
        # and its negatives, when asked (tests): kept, they would hold a step's (A, W) tensors
        # through the next step, which then allocates afresh instead of reusing them
        self.keep_last_negs = False
        self.last_negs: Negatives | None = None

    # -- what a strategy may ask for
    def _forward(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)`` under the run's speed options; float32 embeddings out."""
        if self.cfg.speed.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.bf16:
            return module(x)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            return module(x).float()

    def _encode(self, ids: torch.Tensor, grad: bool) -> torch.Tensor:
        v = self.suite.view(self.train_split.x[ids], self.gen)
        n = ids.shape[0]
        if grad:
            self.cost.trained_samples += n
            return self._forward(self.train_encoder, v)
        self.cost.nograd_encodes += n
        with torch.no_grad():
            return self._forward(self.key_encoder or self.encoder, v)

    @torch.no_grad()
    def _encode_all(self) -> torch.Tensor:
        """Un-augmented projections of the whole training set (an index refresh), eval mode."""
        self.cost.nograd_encodes += self.n_train
        self._sync_buffers(self.key_encoder or self.encoder)
        return embed(self.key_encoder or self.encoder, self.suite, self.train_split.x,
                     projection=True)

    def _charge_mining(self, macs: int) -> None:
        self.cost.mining_macs += int(macs)

    def _charge_adversary(self, n: int) -> None:
        self.cost.adversary_updates += int(n)

    def context(self, ids: torch.Tensor, step: int, fraction: float,
                generator: torch.Generator) -> StepContext:
        """What a strategy may use at this step (encodes and charges go to this run's meter)."""
        return StepContext(
            step=step, fraction=fraction, ids=ids, generator=generator, n_train=self.n_train,
            encode=self._encode, encode_all=self._encode_all,
            charge_mining=self._charge_mining, charge_adversary=self._charge_adversary,
            temperature=self.cfg.objective.temperature,
            labels=self.train_split.y if self.strategy.oracle else None,
        )

    def _encode_together(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """The encoder on each view with gradients: one call on their concatenation when their
        shapes allow (one pass of the weights, one set of kernels), else one call each."""
        enc = self.train_encoder
        if len(views) == 1:
            return [self._forward(enc, views[0])]
        if all(v.shape[1:] == views[0].shape[1:] for v in views):
            z = self._forward(enc, torch.cat(views))
            return list(z.split([v.shape[0] for v in views]))
        return [self._forward(enc, v) for v in views]

    def _sync_buffers(self, module: torch.nn.Module | None = None) -> None:
        """Rank 0's buffers (batch-norm running statistics) of ``module`` (the encoder) on
        every rank, before it runs in eval mode (an index refresh, an evaluation). Every rank
        must call it."""
        if self.dist is not None:  # the parameters agree already: the same updates everywhere
            distributed.broadcast_module(module or self.encoder, self.dist, parameters=False)

    def _next_ids(self, b: int) -> torch.Tensor:
        if self._pos + b > self.n_train:  # new epoch; the tail is dropped so ids never repeat
            self._perm = torch.randperm(self.n_train, generator=self.gen, device=self.device)
            self._pos = 0
        ids = self._perm[self._pos:self._pos + b]
        self._pos += b
        return ids

    # -- the step
    def step(self, b: int) -> None:
        cfg, clock, cost = self.cfg, self.clock, self.cost
        before = cost.flops()
        with clock.phase("data"):
            ids = self._next_ids(b)
            x = self.train_split.x[ids]
            v1, v2 = self.suite.views(x, self.gen)
            vh = self.suite.hard_negative_view(x, self.gen)  # (B, ...) or None
        ctx = self.context(ids, self.budget.steps, self.budget.fraction, self.gen)
        self.lr = learning_rate(cfg.optim, self._fraction_after(b))
        for group in self.opt.param_groups:
            group["lr"] = self.lr
        with clock.phase("forward_backward"):
            hard = [] if vh is None else [vh]  # a supervised hard negative: trained too
            d = self.dist
            if d is not None:  # this rank encodes its share of the global batch
                lo, hi = d.span(b)
                v1, v2, hard = v1[lo:hi], v2[lo:hi], [v[lo:hi] for v in hard]
            if self.key_encoder is None:
                q, k, *h = self._encode_together([v1, v2, *hard])  # (B, D) each
                cost.trained_samples += (2 + len(hard)) * b
            else:
                q, *h = self._encode_together([v1, *hard])
                with torch.no_grad():
                    k = self._forward(self.key_encoder, v2)
                cost.trained_samples += (1 + len(hard)) * b
                cost.nograd_encodes += b
            if d is not None:  # the global batch on every rank, gradients kept
                q, k = distributed.gather_rows(q, d, b), distributed.gather_rows(k, d, b)
                h = [distributed.gather_rows(x, d, b) for x in h]
        with clock.phase("mining"):
            negs = self.strategy.select(q, k, ctx)
            if cfg.fn_filter != "none":
                negs, counts = apply_filter(negs, cfg.fn_filter, self.meter.label_of)
                self.filter_counts += counts
                self.filter_anchors += negs.num_anchors
            if h:
                negs = with_hard_negatives(negs, h[0])
        with clock.phase("forward_backward"):
            out = self.objective(negs)
        with clock.phase("update"):
            # the meter reads the similarities and masks while the forward pass left them in
            # cache, and before `update` may rewrite buffers that `negs` refers to (a queue)
            self.meter.observe(negs, out.sim)
        with clock.phase("forward_backward"):
            self.opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if self.dist is not None:
                distributed.average_gradients(list(self.encoder.parameters()), self.dist)
            self.opt.step()
            cost.objective_flops += objective_flops(negs)
        with clock.phase("update"):
            self._loss_sum += out.loss.detach()
            self._loss_steps += 1
            self.strategy.update(q.detach(), k.detach(), ctx)
            if self.key_encoder is not None:
                self._momentum_update()
        self.last_loss = out.loss.detach()
        if self.keep_last_negs:
            self.last_negs = negs
        cost.state_bytes = max(cost.state_bytes, self.strategy.state_bytes())
        self.budget.charge(b, cost.flops() - before)

    @torch.no_grad()
    def _momentum_update(self) -> None:
        m = self.momentum
        ks = list(self.key_encoder.parameters())
        qs = list(self.encoder.parameters())
        torch._foreach_mul_(ks, m)
        torch._foreach_add_(ks, qs, alpha=1.0 - m)
        for kb, qb in zip(self.key_encoder.buffers(), self.encoder.buffers(), strict=True):
            kb.copy_(qb)

    def _fraction_after(self, b: int) -> float:
        bud = self.budget
        if bud.kind == "samples":
            return (bud.samples + b) / bud.total
        if bud.kind == "steps":
            return (bud.steps + 1) / bud.total
        if bud.kind == "flops" and bud.steps:
            return min(1.0, (bud.flops + bud.flops / bud.samples * b) / bud.total)
        return bud.fraction

    # -- logging (the only host syncs during training)
    def log_point(self) -> dict[str, float]:
        self.strategy.check()
        loss = (self._loss_sum / max(self._loss_steps, 1)).item()
        if not math.isfinite(loss):
            raise RunFailed(f"loss is {loss} at step {self.budget.steps} (diverged; try a lower "
                            f"optim.lr or a higher objective.temperature)")
        self._loss_sum.zero_()
        self._loss_steps = 0
        interval, _ = self.meter.snapshot()
        if not self.labelled:  # the meter counted against labels of -1: meaningless
            interval = {k: v for k, v in interval.items() if k not in LABEL_METRICS}
        phases = self.clock.resolve()
        now = time.perf_counter()
        s0, t0 = self._last_log
        dt = now - t0
        point = {
            "loss": loss,
            "lr": self.lr,
            "budget_fraction": self.budget.fraction,
            "samples_per_second": (self.budget.samples - s0) / dt if dt > 0 else float("nan"),
            **interval,
            **{f"time_{p}": v for p, v in phases.items()},
            **self.strategy.extra_metrics(),
        }
        self._last_log = (self.budget.samples, now)
        point["samples_seen"] = self.budget.samples
        self.history.append(point)
        return point

    def train(self, on_log: Callable[[dict[str, float]], None] | None = None,
              checkpoints: tuple[float, ...] = (),
              on_checkpoint: Callable[[Trainer, float], None] | None = None) -> None:
        """Spend the budget. ``on_checkpoint(trainer, fraction)`` is called after the step where
        the budget spent first reaches one of the ``checkpoints`` (fractions in (0, 1)), after
        that step's log point when it has one, with that fraction (the largest, when one step
        passes several; none once the budget is spent: the final evaluation follows). Its time
        is excluded from ``train_seconds`` and from a ``seconds`` budget."""
        cfg = self.cfg
        self.encoder.train()
        self.budget.start()
        t0 = time.perf_counter()
        self._last_log = (0, t0)
        todo = sorted(f for f in checkpoints if 0.0 < f < 1.0)
        if todo and self.dist is not None:
            raise ConfigError("checkpoints (tuning) are not supported in a distributed run")
        while (b := self._next_batch()) > 0:
            self.step(b)
            if self.budget.steps % cfg.log_every == 0 or self.budget.done:
                point = self.log_point()
                if on_log is not None:
                    on_log(point)
            if todo and self.budget.fraction >= todo[0] and not self.budget.done:
                while todo and self.budget.fraction >= todo[0]:
                    reached = todo.pop(0)
                if on_checkpoint is not None:
                    self._checkpoint(on_checkpoint, reached)
        if self._loss_steps:
            point = self.log_point()
            if on_log is not None:
                on_log(point)
        self.train_seconds = time.perf_counter() - t0 - self.checkpoint_seconds

    def _next_batch(self) -> int:
        """The next step's global batch size, 0 when the budget is spent. Ranks agree by
        construction on every kind but ``seconds``, whose clock rank 0 reads for all (one
        broadcast per step, in distributed runs with a seconds budget only)."""
        b = self.budget.next_batch_size()
        if self.dist is not None and self.budget.kind == "seconds":
            t = torch.tensor([b], device=self.device)
            torch.distributed.broadcast(t, src=0)
            b = int(t.item())
        return b

    def _checkpoint(self, hook: Callable[[Trainer, float], None], fraction: float) -> None:
        t = time.perf_counter()
        try:
            with self.clock.phase("eval"):
                hook(self, fraction)
        finally:
            dt = time.perf_counter() - t
            self.checkpoint_seconds += dt
            self.budget.exclude(dt)  # the hook's time does not count against a seconds budget
            self._last_log = (self._last_log[0], self._last_log[1] + dt)
            self.encoder.train()

    def knn_accuracy(self, split: str) -> float:
        """kNN top-1 of the encoder as it is now on ``split`` (``val`` for tuning): the cheap
        evaluation of a checkpoint (no linear probe, no suite extras)."""
        from negbench.harness.evaluate import knn_accuracy

        return knn_accuracy(self.encoder, self.suite, self.data_on_device(), split,
                            self.cfg.eval)

    def health(self) -> health.Health:
        """Representation health of the encoder as it is now, on a fixed sample of the
        evaluated split (:func:`negbench.harness.health.sample_health`)."""
        split = self.data_on_device().split(self.cfg.eval.split)
        return health.sample_health(self.encoder, self.suite, split.x)

    def floor(self) -> dict[str, float]:
        """The floors: the encoder's figures before any training (call it before
        :meth:`train`) on the evaluated split, as ``floor_*`` metrics (kNN, linear, the suite's
        own, alignment, uniformity, RankMe), ``raw_knn_acc`` (kNN on the raw inputs, vision
        suites) and ``floor_seconds``, the time they took (kept out of the eval phase, as a run
        that reuses another's floors spends none). A run that does not beat them learned
        nothing."""
        if self.budget.samples:
            raise RuntimeError("floor() measures the untrained encoder: call it before train()")
        t0 = time.perf_counter()
        data = self.data_on_device()
        acc, _ = evaluate_items(self.encoder, self.suite, data, self.cfg.eval, self.cfg.seed)
        out = {f"floor_{k}": v for k, v in acc.items()}
        out.update(self.health().as_dict(prefix="floor_"))
        if self.suite.modality == "vision":
            query, e = data.split(self.cfg.eval.split), self.cfg.eval
            out["raw_knn_acc"] = knn_top1(
                self.suite.prepare(data.train.x).flatten(1), data.train.y,
                self.suite.prepare(query.x).flatten(1), query.y, data.n_classes, e.knn_k,
                e.knn_temperature)
        out["floor_seconds"] = time.perf_counter() - t0
        return out

    def floor_key(self) -> str:
        """What the floors depend on, hashed: suite and its config, seed, evaluation, device
        kind, precision and the code's commit. Runs that share it share their floors."""
        import hashlib
        import json

        from negbench.harness.tracking import git_commit

        c = self.cfg
        what = {"suite": c.suite, "suite_cfg": dataclasses.asdict(c.suite_cfg), "seed": c.seed,
                "eval": dataclasses.asdict(c.eval), "device": self.device.type,
                "precision": c.speed.precision, "commit": git_commit()}
        if self.suite.data_identity is not None:  # the same path may hold other files now
            what["data"] = self.suite.data_identity
        return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()

    def finish(self) -> dict[str, float]:
        """Evaluate (every rank of a distributed run, on the same model) and sum up the run.
        Which evaluated items the probes got right is kept in ``self.items``."""
        self._sync_buffers()
        with self.clock.phase("eval"):
            acc, self.items = evaluate_items(self.encoder, self.suite, self.data_on_device(),
                                             self.cfg.eval, self.cfg.seed)
            acc.update(self.health().as_dict())
        _, total = self.meter.snapshot()
        phases = self.clock.resolve()
        b = self.budget
        m: dict[str, float] = {
            **acc,
            **total,
            "samples_seen": b.samples,
            "steps": b.steps,
            "wall_seconds": self.train_seconds,
            "eval_seconds": phases["eval"],
            "samples_per_second": b.samples / self.train_seconds if self.train_seconds else 0.0,
            "budget_total": b.total,
            "budget_spent": b.spent,
            "peak_mem_mb": peak_host_mb(),
            **self.cost.as_dict(),
            **{f"time_{p}": v for p, v in phases.items()},
        }
        if self.device.type == "cuda":
            m["peak_cuda_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.cfg.fn_filter != "none":
            m.update(filter_metrics(self.filter_counts, self.filter_anchors))
        self.deciles = self.meter.deciles()
        if not self.labelled:  # hardness deciles need no label; their FNR does
            self.deciles["fnr"] = [math.nan] * len(self.deciles["edges"])
            m = {k: v for k, v in m.items() if k not in LABEL_METRICS}
        for i, (e, f) in enumerate(zip(self.deciles["edges"], self.deciles["fnr"], strict=True)):
            if self.labelled:
                m[f"fnr_decile_{i}"] = f
            m[f"hardness_decile_edge_{i}"] = e
        return m

    def data_on_device(self):
        d = self.data
        return type(d)(train=self.train_split, val=d.val.to(self.device),
                       test=None if d.test is None else d.test.to(self.device),
                       n_classes=d.n_classes, class_names=d.class_names)


def run(cfg: RunConfig, *, tracking_uri: str | None = None, experiment: str = "negbench",
        track: bool = True, data_dir: str | None = None,
        on_log: Callable[[dict[str, float]], None] | None = None,
        extra_tags: dict[str, str] | None = None, run_name: str | None = None,
        checkpoints: tuple[float, ...] = (),
        on_checkpoint: Callable[[Trainer, float], dict[str, float] | None] | None = None,
        on_tracked: Callable[[str], None] | None = None) -> RunResult:
    """Train, evaluate and (with ``track``) record one run in mlflow.

    ``on_checkpoint(trainer, fraction)`` runs at each of the ``checkpoints`` (see
    :meth:`Trainer.train`); the metrics it returns are logged at that point (step = samples
    seen), and it may raise :class:`RunStopped` to end the run early. ``on_tracked(run_id)`` is
    called as soon as the mlflow run exists (before training).

    In a distributed run (``torchrun``; see :mod:`negbench.harness.distributed`) every rank trains
    and evaluates the same model; rank 0 alone records the run, and ``world_size`` says how many
    processes it took."""
    trainer = Trainer(cfg, data_dir=data_dir)
    tracker, floor_key = None, None
    if track and (trainer.dist is None or trainer.dist.main):
        floor_key = trainer.floor_key()  # only a tracked run can lend or borrow floors
        tracker = Tracker(tracking_uri, experiment)
        tags = run_tags(cfg, device_label(trainer.device))
        tags["world_size"] = str(trainer.dist.world if trainer.dist else 1)
        tags[FLOOR_KEY_TAG] = floor_key
        if trainer.strategy.oracle or cfg.fn_filter == "oracle":
            tags[ORACLE_TAG] = "1"
        if cfg.fn_filter != "none":
            tags[FILTER_TAG] = cfg.fn_filter
        if not trainer.labelled:
            tags[LABELS_TAG] = "none"
        if trainer.suite.data_identity is not None:
            tags[DATA_TAG] = trainer.suite.data_identity
        tags.update(extra_tags or {})
        tracker.start(run_name or f"{cfg.suite}/{cfg.strategy}/seed{cfg.seed}", cfg.flat(), tags)
        tracker.log_json("config.json", cfg.to_dict())
        if on_tracked is not None:
            on_tracked(tracker.run_id)
    health_at = HEALTH_AT if trainer.dist is None else ()  # no checkpoints across ranks

    def log(point: dict[str, Any]) -> None:
        if tracker is not None:  # in the background: the loop does not wait for the store
            tracker.log_metrics({k: v for k, v in point.items() if k != "samples_seen"},
                                step=int(point["samples_seen"]), background=True)
        if on_log is not None:
            on_log(point)

    # the fractions still to come, the caller's and health's; a step that passes several at once
    # reports the caller's last one, as Trainer.train does
    todo = {"caller": sorted(f for f in checkpoints if 0.0 < f < 1.0), "health": list(health_at)}

    def due(kind: str, fraction: float) -> float | None:
        passed = [f for f in todo[kind] if f <= fraction]
        todo[kind] = [f for f in todo[kind] if f > fraction]
        return passed[-1] if passed else None

    def checkpoint(tr: Trainer, fraction: float) -> None:
        if tracker is not None:  # checkpoint time is not training time: a good moment to send
            tracker.send()
        point = {}
        if due("health", fraction) is not None:
            point.update(tr.health().as_dict())
        mine = due("caller", fraction)
        if on_checkpoint is not None and mine is not None:
            point.update(on_checkpoint(tr, mine) or {})
        if point and tracker is not None:
            tracker.log_metrics(point, step=int(tr.budget.samples))

    try:  # from here an interruption (Ctrl-C, SIGTERM) or an error ends the tracked run
        # the floors: another finished run of this experiment with the same floor key measured
        # them already (the same untrained encoder on the same split), or this run measures them
        floors, floor_from = _recorded_floors(tracker, floor_key), None
        if floors is not None:
            floors, floor_from = floors
        else:
            floors = trainer.floor()
        trainer.train(on_log=log, checkpoints=tuple(sorted({*checkpoints, *health_at})),
                      on_checkpoint=checkpoint)
        if tracker is not None:  # the curve's last points are stored while evaluation runs
            tracker.send()
        metrics = trainer.finish()
    except RunStopped as e:
        if tracker is not None:
            tracker.log_metrics(e.metrics, step=int(trainer.budget.samples))
            tracker.set_tags(e.tags)
            tracker.end("KILLED")
        raise
    except BaseException as e:
        if tracker is not None:
            reason = f"{type(e).__name__}: {e}"
            tracker.set_tags({"failure": reason[:4000]})
            # interrupted (Ctrl-C, or a scheduler's signal turned into SystemExit: a Slurm
            # job preempted), not failed: the cell goes back to the queue
            tracker.end("KILLED" if isinstance(e, KeyboardInterrupt | SystemExit) else "FAILED")
        raise
    metrics.update(floors)
    verdict, reason = health.verdict(metrics)
    if tracker is not None:
        tracker.log_metrics(metrics, step=int(trainer.budget.samples))
        tracker.log_json("fnr_deciles.json", trainer.deciles)
        tracker.log_json("items.json", items_record(cfg.eval.split, trainer.items))
        tags = {HEALTH_TAG: verdict, HEALTH_REASON_TAG: reason}
        if floor_from is not None:
            tags[FLOOR_FROM_TAG] = floor_from
        tracker.set_tags(tags)
        tracker.end("FINISHED")
    return RunResult(cfg, metrics, tracker.run_id if tracker else None, trainer.history,
                     trainer.deciles, verdict, reason, labelled=trainer.labelled)


def _recorded_floors(tracker: Tracker | None, key: str) -> tuple[dict[str, float], str] | None:
    """The floor metrics of the latest FINISHED run of ``tracker``'s experiment whose floor key
    is ``key``, with that run's id; None when there is none (or no tracker)."""
    if tracker is None:
        return None
    found = tracker.client.search_runs(
        [tracker.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"attributes.status = 'FINISHED' and tags.`{FLOOR_KEY_TAG}` = '{key}'")
    if not found:
        return None
    m = found[0].data.metrics
    floors = {k: v for k, v in m.items()
              if (k.startswith("floor_") and k != "floor_seconds") or k == "raw_knn_acc"}
    # floor_align: every run measures it, with labels or without
    return (floors, found[0].info.run_id) if "floor_align" in floors else None


@torch.no_grad()
def probe_selection(trainer: Trainer, strategy: str, seed: int, batches: int = 5,
                    strategy_cfg=None) -> dict[str, float]:
    """What ``strategy`` selects on the trainer's current (frozen) encoder: FNR, hardness and
    the rest of the meter's totals over ``batches`` batches, without training anything.

    Compares strategies at one fixed checkpoint (a trained encoder's negatives), with the same
    data views as a run. Stateful strategies get their ``update`` after each batch."""
    strat = strategies.create(strategy, strategy_cfg, dim=trainer.encoder.out_dim,
                              n_train=trainer.n_train).to(trainer.device)
    meter = NegativeMeter(trainer.train_split.y)
    gen = torch.Generator(device=trainer.device).manual_seed(seed)
    perm = torch.randperm(trainer.n_train, generator=gen, device=trainer.device)
    b = trainer.cfg.batch_size
    saved_gen, trainer.gen = trainer.gen, gen  # encode() draws its views from the probe's stream
    try:
        for step in range(batches):
            ids = perm[(step * b) % trainer.n_train:][:b]
            v1, v2 = trainer.suite.views(trainer.train_split.x[ids], gen)
            q, k = trainer.encoder(v1), (trainer.key_encoder or trainer.encoder)(v2)
            ctx = trainer.context(ids, step, step / batches, gen)
            negs = strat.select(q, k, ctx)
            meter.observe(negs, negs.similarity())
            strat.update(q, k, ctx)
        strat.check()
    finally:
        trainer.gen = saved_gen
    return meter.snapshot()[1]
