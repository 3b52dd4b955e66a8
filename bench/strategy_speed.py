"""Issue 3's speed and memory figures: every strategy's select + InfoNCE step against a plain
cross-entropy floor, and pytorch-metric-learning as the peer.

    .venv/bin/python bench/strategy_speed.py [--strategies NAME ...]
        [--batch-sizes 256 512 1024 4096]
        [--repeats 256=101 512=51 1024=15 4096=5] [--peer-batch-sizes 256 512] [--no-peer]
        [--fn-filter none|positive-aware|self-guided|oracle]

A benchmark that prints figures, not a test. What it measures, on the CPU (``--threads``, 2 by
default), with D = 128 and random unit vectors (seeded) for the two views q and k:

1. **Step** = ``strategy.select(q, k, ctx)`` (then ``--fn-filter``'s rule and its counts against
   labels of 10 balanced classes, as the runner applies it; timed as select) +
   ``info_nce(negs, 0.2)`` forward and backward, plus
   ``strategy.update(q, k, ctx)`` for the strategies that override it (marked ``+update``). The
   phases are timed apart inside the same step (CPU ops are synchronous), so the report says
   which of select / objective / update dominates. ``ctx.encode`` is a fake encoder over a
   fixed table of ``--n-train`` unit vectors (as ``tests/conftest.py``'s ``Table``): a row
   lookup whose result requires grad when the strategy asks for a trained encode, so the
   backward reaches mined items as it would through an encoder. The time spent inside it is
   the encoder's work, not the strategy's (the harness charges encodes as trained samples): it
   is taken out of select and shown in its own column, and the network's own forward and
   backward are not in the figure at all. Stateful strategies are warmed up first
   (memory-bank's queue and semi-hard's bank filled, adversarial's M rows filled, dynamic's
   index and window table built), so the timed steps are steady state. ``dynamic`` refreshes
   once per epoch by default (``--n-train`` / B steps: 49 at B=1024, 195 at B=256), and each
   refresh also searches every item's window (N x N x D, seconds at N=50,000): the refresh
   falls in the warm-up, and the median of the few timed steps is an ordinary step's. The
   refresh is charged to the cost meter in a real run, not hidden: see the equal-budget
   comparison for its share of the wall-clock.
2. **Floor** = a plain cross-entropy InfoNCE over the same number of candidates: with A =
   ``negs.num_anchors`` and W = ``negs.width`` from the strategy's own Negatives,
   ``F.cross_entropy`` on (A, 1 + W) logits made by ONE matmul of A anchors (pre-scaled by
   1/tau) against a (1 + W, D) candidate matrix (the positive is one of those columns), both
   requiring grad, forward and backward. It is the cheapest plain InfoNCE of that size. A
   selection in index form (per-anchor candidates: ``dynamic``) is held to the plain InfoNCE of
   its own form: the same logits from one batched product of each anchor with its own
   (1 + W, D) candidates (``einsum``), which moves A x W x D numbers where the shared floor moves
   W x D; the report marks it "per-anchor". An index into the batch's own views alone (K
   drawn from the scored batch: ``simans``) is held to the shared floor over the whole batch
   (W = P), since no strategy can pick among the batch's views without scoring them. Strategy
   and floor steps are interleaved (alternating which goes first) so that noise from other
   jobs on the machine hits both; each time is the median over the repeats, and the ratio held
   to the 2x target is the median of the per-pair ratios (a step over the floor step timed
   next to it), so that a drift of the machine's speed within a case cancels. The ratio of the
   two medians is printed beside it.
3. **Memory**, two ways, both cheap and honest about what they are:
   - *peak RSS growth*: each (strategy, B) runs in a fresh subprocess; after imports, the
     strategy's construction and the inputs, ``ru_maxrss`` is read, then the warm-up steps run
     (strategy only, no floor yet) and ``ru_maxrss`` is read again. The difference is the most
     memory a steady-state step held at once, beyond what was resident before (freed large
     blocks are returned to the OS by the allocator, so it is not cumulative). It is process
     memory, including allocator slack, so take it as an upper bound; ``ru_maxrss`` never goes
     down, which is why every case needs its own process.
   - *largest tensor*: one extra, untimed step under a ``TorchDispatchMode`` that sees every
     ATen op of select, the objective's forward and backward and update, and records the
     largest new storage any op produced (in elements, with its shape, dtype and op; views and
     in-place results, which reuse an input's storage, are not new tensors). It is
     printed relative to A x W, the objective's own (anchors x candidates) matrix: ~1 means
     "no tensor larger than O(B x pool)". A bigger ratio is named with its shape so it can be
     judged (an (A, S, D) tensor of per-anchor extras, a search chunk over the whole index).
4. **Peer**: pytorch-metric-learning's ``TripletMarginMiner(margin=m, type_of_triplets=
   "semihard")`` on ``cat(q, k)`` with labels ``cat(ids, ids)``, timed against negbench's
   ``semi-hard`` select with the matching config (K=0, fallback="none", the same m, pool="batch")
   and with its registered default config (fallback="nearest");
   and ``NTXentLoss(temperature=0.2)`` forward + backward on the same inputs, against
   ``in-batch`` select + ``info_nce`` forward + backward. Each peer case runs in its own
   subprocess (NT-Xent peaks near 18 GB of RSS at B=512 and runs out of memory at B=1024 on
   this 23 GB machine, so 1024 is left out unless asked for with
   ``--peer-batch-sizes 256 512 1024``).
5. **Same pairs**: negbench's ``semi-hard`` with that config and the miner, both in float64, must
   select the same set of (anchor row, pool row) pairs, the miner's (a, p, n) triplets read as
   (a, n) pairs; anchors and pool are both ``cat(q, k)`` in that order. The float32 result is
   shown beside it for information (float32 ties at band edges can flip a pair).

Contention. The machine is shared; with 2 threads on 2 cores, a job holding one core makes
every parallel op wait a scheduler slice for its second thread, which inflates small ops by up
to ~100x (a 1.6 ms step measured 320 ms). So before each case the script waits (``--quiet``,
``--max-wait``) until other processes use less than 20% of the machine, and every case reports
"others' CPU": the share of the machine other processes used while it was timed (from
/proc/stat minus this process's own CPU time). Figures with a high share are not to be trusted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from negbench import strategies
from negbench.harness.config import apply_overrides, parse_sets
from negbench.harness.filters import FILTERS, apply_filter
from negbench.harness.objectives import info_nce
from negbench.strategies import StepContext, Strategy
from negbench.strategies.semi_hard import SemiHardConfig

D = 128
TAU = 0.2
SIZES = (256, 512, 1024, 4096)
# repeats per batch size: enough for a stable median (a ratio measured twice agreed to ~10%
# with 15 at B = 256; small steps are cheap to repeat), the whole default run near 10 minutes
REPEATS = {256: 101, 512: 51, 1024: 15, 4096: 5}
# fresh processes per case, in rounds over the strategies: the case's figures are those of its
# run with the median ratio. On this shared VM a noisy spell of a few seconds (invisible in
# /proc/stat) moved one B = 256 ratio from 1.96 to 2.19; three runs spread over the minutes of
# a round see different spells. The large sizes, seconds per step, are not run again.
ROUNDS = {256: 3, 512: 3}
PEER_REPEATS = {"miner": {256: 7, 512: 5}, "ntxent": {256: 3, 512: 2}}
MARKER = "@@RESULT "


# --------------------------------------------------------------------------- inputs
class TableEncoder:
    """A fake encoder over ``n`` items: row i of a fixed (n, D) table of unit vectors."""

    def __init__(self, n: int, d: int, seed: int):
        g = torch.Generator().manual_seed(seed + 12345)
        self.z = F.normalize(torch.randn(n, d, generator=g), dim=1)  # (N, D)
        self.seconds = 0.0  # time spent in encode(): the encoder's work, not the strategy's

    def encode(self, ids: torch.Tensor, grad: bool) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.z[ids]  # (n, D) a fresh tensor
        out.requires_grad_(grad)  # a trained encode carries gradients like a network's
        self.seconds += time.perf_counter() - t0
        return out

    def encode_all(self) -> torch.Tensor:
        return self.z.clone()


def views(b: int, n_train: int, gen: torch.Generator, dtype=torch.float32):
    """(q, k, ids): two (B, D) leaves of random unit vectors requiring grad, B distinct ids."""
    ids = torch.randperm(n_train, generator=gen)[:b]  # (B,)
    q = F.normalize(torch.randn(b, D, generator=gen, dtype=dtype), dim=1).requires_grad_()
    k = F.normalize(torch.randn(b, D, generator=gen, dtype=dtype), dim=1).requires_grad_()
    return q, k, ids


def make_ctx(step: int, ids, gen, table: TableEncoder, n_train: int) -> StepContext:
    return StepContext(step=step, fraction=0.5, ids=ids, generator=gen, n_train=n_train,
                       encode=table.encode, encode_all=table.encode_all, temperature=TAU)


def fill_steps(strat: Strategy, b: int) -> int:
    """Steps of ``update`` before the strategy's state (a queue, a bank, learned rows) is full."""
    rows = 0
    for name, t in list(strat.named_buffers()) + list(strat.named_parameters()):
        if name in ("queue", "bank", "W"):
            rows = max(rows, t.shape[0])
    return math.ceil(rows / b)


def has_update(strat: Strategy) -> bool:
    return type(strat).update is not Strategy.update


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class LargestTensor(TorchDispatchMode):
    """Records the largest storage (in elements) produced by any ATen op while active."""

    def __init__(self):
        super().__init__()
        self.numel, self.desc = 0, ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # views and in-place results share an input's storage: not a new tensor
        seen = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                n = t.untyped_storage().nbytes() // t.element_size()
                if n > self.numel:
                    dt = str(t.dtype).replace("torch.", "")
                    self.numel = n
                    self.desc = f"{'x'.join(map(str, t.shape))} {dt} ({func.__name__})"
        return out


class OthersCpu:
    """The share of the machine's CPU time that other processes used while active: from
    /proc/stat (all CPUs busy) minus this process's own user + system time, over wall x CPUs.
    Near 0: the timings are this process's alone; well above 0: another job was competing for
    the cores, and with 2 threads on 2 cores each parallel op can then wait a scheduler slice
    for its second thread, which inflates small ops most."""

    def _read(self):
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(v[:8]) - v[3] - v[4]) / hz  # all CPUs, minus idle and iowait
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), busy, ru.ru_utime + ru.ru_stime

    def __enter__(self):
        self.t0 = self._read() if os.path.exists("/proc/stat") else None
        self.share = float("nan")
        return self

    def __exit__(self, *exc):
        if self.t0 is not None:
            (w0, b0, o0), (w1, b1, o1) = self.t0, self._read()
            wall = max(w1 - w0, 1e-9)
            self.share = max(0.0, (b1 - b0) - (o1 - o0)) / (wall * (os.cpu_count() or 1))
        return False


def median_ms(xs: list[float]) -> float:
    return 1000.0 * statistics.median(xs)


# --------------------------------------------------------------------------- worker: strategy
def strategy_step(strat, b, step, gen, table, n_train, upd, flt=None):
    """One timed step; returns (select, objective, update, encode) seconds and the Negatives:
    ``encode`` is the part of select spent in the fake encoder (``ctx.encode``). ``flt``:
    (filter name, label of each id) applied after the selection, as the runner does (its
    time, and its counts against the labels, are part of select)."""
    q, k, ids = views(b, n_train, gen)
    ctx = make_ctx(step, ids, gen, table, n_train)
    table.seconds = 0.0
    t0 = time.perf_counter()
    negs = strat.select(q, k, ctx)
    if flt is not None:
        negs, _ = apply_filter(negs, *flt)
    t1 = time.perf_counter()
    te = table.seconds
    info_nce(negs, TAU).loss.backward()
    t2 = time.perf_counter()
    if upd:
        strat.update(q.detach(), k.detach(), ctx)
    t3 = time.perf_counter()
    return (t1 - t0, t2 - t1, t3 - t2, te), negs


def floor_inputs(a: int, w: int, gen: torch.Generator):
    anchors = F.normalize(torch.randn(a, D, generator=gen), dim=1).requires_grad_()  # (A, D)
    cand = F.normalize(torch.randn(1 + w, D, generator=gen), dim=1).requires_grad_()  # (1+W, D)
    target = torch.randint(1 + w, (a,), generator=gen)  # (A,) the positive's column
    return anchors, cand, target


def floor_step(a: int, w: int, gen: torch.Generator, per_anchor: bool = False) -> float:
    """One plain InfoNCE forward and backward over A anchors and 1 + W candidates: shared by
    every anchor (one matmul), or, with ``per_anchor``, each anchor's own (A, 1 + W, D)
    candidates (one batched product), the plain form of an index-form selection."""
    if per_anchor:
        anchors = F.normalize(torch.randn(a, D, generator=gen), dim=1).requires_grad_()
        cand = F.normalize(torch.randn(a, 1 + w, D, generator=gen), dim=2).requires_grad_()
        target = torch.randint(1 + w, (a,), generator=gen)  # (A,)
        t0 = time.perf_counter()
        logits = torch.einsum("ad,awd->aw", anchors * (1.0 / TAU), cand)  # (A, 1 + W)
        F.cross_entropy(logits, target).backward()
        return time.perf_counter() - t0
    anchors, cand, target = floor_inputs(a, w, gen)
    t0 = time.perf_counter()
    logits = (anchors * (1.0 / TAU)) @ cand.T  # (A, 1 + W)
    F.cross_entropy(logits, target).backward()
    return time.perf_counter() - t0


def run_strategy_case(spec: dict) -> dict:
    name, b, n_train, repeats, seed = (spec[k] for k in ("name", "b", "n_train", "repeats",
                                                         "seed"))
    torch.manual_seed(seed)  # strategies that draw their initial state from the global RNG
    gen = torch.Generator().manual_seed(seed)
    table = TableEncoder(n_train, D, seed)
    cls = strategies.get(name)
    cfg = apply_overrides(cls.Config(), spec.get("sets", {}), "strategy")  # --set KEY=VALUE
    strat = strategies.create(name, cfg, dim=D, n_train=n_train)
    flt = None
    if spec.get("fn_filter", "none") != "none":  # labels of 10 balanced classes, and id -1's
        flt = (spec["fn_filter"], torch.randint(10, (n_train + 1,), generator=gen))
    upd = has_update(strat)
    warm = spec["warmup"] + (fill_steps(strat, b) if upd else 0)
    rss0 = peak_rss_mb()
    step = 0
    for _ in range(warm):  # each step's Negatives freed before the next, as in the runner
        strategy_step(strat, b, step, gen, table, n_train, upd, flt)
        step += 1
    rss_growth = peak_rss_mb() - rss0
    # the shape the floor copies, from one more (untimed) steady-state step
    _, negs = strategy_step(strat, b, step, gen, table, n_train, upd, flt)
    step += 1
    a, w, p = negs.num_anchors, negs.width, negs.pool_size
    per_anchor = negs.index is not None  # per-anchor candidates: the per-anchor floor
    if per_anchor and negs.batch_views and p == negs.batch_views:
        # K drawn by index from the batch's own views, which it must score first (simans):
        # held to the in-batch floor over the whole batch, the cheapest way to score it
        per_anchor, w = False, p
    del negs
    floor_step(a, w, gen, per_anchor)  # warm the floor's kernels
    sel, obj, up, enc, tot, flo = [], [], [], [], [], []
    with OthersCpu() as others:
        for r in range(repeats):
            if r % 2:
                flo.append(floor_step(a, w, gen, per_anchor))
            (ts, to, tu, te), negs = strategy_step(strat, b, step, gen, table, n_train, upd, flt)
            del negs
            step += 1
            if not r % 2:
                flo.append(floor_step(a, w, gen, per_anchor))
            sel.append(ts - te)
            enc.append(te)
            obj.append(to)
            up.append(tu)
            tot.append(ts - te + to + tu)
    # one more step under the dispatch mode, for the largest tensor (its overhead is not timed)
    largest = LargestTensor()
    with largest:
        _, negs = strategy_step(strat, b, step, gen, table, n_train, upd, flt)
    strat.check()
    return {
        "name": name, "b": b, "a": a, "w": w, "p": p, "update": upd, "repeats": repeats,
        "warmup": warm, "ms": median_ms(tot), "select_ms": median_ms(sel),
        # each step against the floor step timed next to it: drift of the machine's speed
        # between the two halves of a case cancels in each pair
        "pair_ratio": statistics.median(t / f for t, f in zip(tot, flo, strict=True)),
        "objective_ms": median_ms(obj), "update_ms": median_ms(up), "floor_ms": median_ms(flo),
        "encode_ms": median_ms(enc), "per_anchor": per_anchor,
        "rss_mb": rss_growth, "largest": largest.numel, "largest_desc": largest.desc,
        "others": others.share,
    }


# --------------------------------------------------------------------------- worker: peer
def pair_codes_mask(mask: torch.Tensor) -> torch.Tensor:
    """Sorted unique a * P + n codes of the selected (anchor, pool row) pairs of a mask."""
    a, n = torch.nonzero(mask, as_tuple=True)
    return torch.unique(a * mask.shape[1] + n)


def pair_codes_triplets(trip, p: int) -> torch.Tensor:
    a, _, n = trip
    return torch.unique(a.long() * p + n.long())


def compare_pairs(ours: torch.Tensor, peer: torch.Tensor) -> dict:
    both = int(torch.isin(ours, peer).sum())
    return {"same": bool(ours.numel() == peer.numel() == both), "ours": ours.numel(),
            "peer": peer.numel(), "both": both}


def run_miner_case(spec: dict) -> dict:
    from pytorch_metric_learning.miners import TripletMarginMiner

    b, n_train, repeats, seed = spec["b"], spec["n_train"], spec["repeats"], spec["seed"]
    m = SemiHardConfig().m
    cfg = SemiHardConfig(m=m, K=0, fallback="none", pool="batch")
    strat = strategies.create("semi-hard", cfg, dim=D, n_train=n_train)
    default = strategies.create("semi-hard", dim=D, n_train=n_train)  # fallback="nearest"
    miner = TripletMarginMiner(margin=m, type_of_triplets="semihard")
    gen = torch.Generator().manual_seed(seed)
    table = TableEncoder(n_train, D, seed)
    q, k, ids = views(b, n_train, gen)
    ctx = make_ctx(0, ids, gen, table, n_train)
    emb, labels = torch.cat([q, k]).detach(), torch.cat([ids, ids])  # (2B, D), (2B,)

    def ours():
        t0 = time.perf_counter()
        negs = strat.select(q, k, ctx)
        return time.perf_counter() - t0, negs

    def ours_default():
        t0 = time.perf_counter()
        negs = default.select(q, k, ctx)
        return time.perf_counter() - t0, negs

    def peer():
        t0 = time.perf_counter()
        trip = miner(emb, labels)
        return time.perf_counter() - t0, trip

    ours()
    ours_default()
    times = {ours: [], ours_default: [], peer: []}
    with OthersCpu() as others:
        for r in range(repeats):
            order = (ours, ours_default, peer) if r % 2 == 0 else (peer, ours_default, ours)
            for f in order:
                t, out = f()
                times[f].append(t)
                if f is ours:
                    negs32 = out
                elif f is peer:
                    trip32 = out
    p = 2 * b
    f32 = compare_pairs(pair_codes_mask(negs32.mask), pair_codes_triplets(trip32, p))
    # the equality check proper, in float64
    q64, k64 = q.detach().double(), k.detach().double()
    negs64 = strat.select(q64, k64, ctx)
    trip64 = miner(torch.cat([q64, k64]), labels)
    f64 = compare_pairs(pair_codes_mask(negs64.mask), pair_codes_triplets(trip64, p))
    strat.check()
    default.check()
    return {"kind": "miner", "b": b, "m": m, "repeats": repeats, "ours_ms": median_ms(times[ours]),
            "default_ms": median_ms(times[ours_default]), "peer_ms": median_ms(times[peer]),
            "f64": f64, "f32": f32, "rss_mb": peak_rss_mb(), "others": others.share}


def run_ntxent_case(spec: dict) -> dict:
    from pytorch_metric_learning.losses import NTXentLoss

    b, n_train, repeats, seed = spec["b"], spec["n_train"], spec["repeats"], spec["seed"]
    strat = strategies.create("in-batch", dim=D, n_train=n_train)
    loss_fn = NTXentLoss(temperature=TAU)
    gen = torch.Generator().manual_seed(seed)
    table = TableEncoder(n_train, D, seed)

    def ours():
        q, k, ids = views(b, n_train, gen)
        ctx = make_ctx(0, ids, gen, table, n_train)
        t0 = time.perf_counter()
        info_nce(strat.select(q, k, ctx), TAU).loss.backward()
        return time.perf_counter() - t0

    def peer():
        q, k, ids = views(b, n_train, gen)
        t0 = time.perf_counter()
        loss_fn(torch.cat([q, k]), torch.cat([ids, ids])).backward()
        return time.perf_counter() - t0

    ours()
    t_ours, t_peer = [], []
    with OthersCpu() as others:
        for r in range(repeats):
            first, second = (ours, peer) if r % 2 == 0 else (peer, ours)
            for f in (first, second):
                (t_ours if f is ours else t_peer).append(f())
    return {"kind": "ntxent", "b": b, "repeats": repeats, "ours_ms": median_ms(t_ours),
            "peer_ms": median_ms(t_peer), "rss_mb": peak_rss_mb(), "others": others.share}


WORKERS = {"strategy": run_strategy_case, "miner": run_miner_case, "ntxent": run_ntxent_case}


def worker(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    out = WORKERS[spec["kind"]](spec)
    print(MARKER + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- the parent
def in_child(spec: dict, timeout: float) -> dict:
    """Run one case in a fresh interpreter; {"error": ...} when it fails or is killed."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(res.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    if res.returncode < 0:
        why = f"killed by signal {-res.returncode}"
        if res.returncode == -9:
            why += " (out of memory?)"
    else:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        why = f"exit {res.returncode}: {tail[:200]}"
    return {"error": why}


def wait_for_quiet(threshold: float, max_wait: float) -> float:
    """Before a case: wait (up to ``max_wait`` s) until other processes use less than
    ``threshold`` of the machine over a half-second sample; returns the seconds waited."""
    t0 = time.perf_counter()
    while True:
        with OthersCpu() as o:
            time.sleep(0.5)
        waited = time.perf_counter() - t0
        if not o.share > threshold or waited >= max_wait:  # NaN (no /proc/stat): go on
            return waited
        time.sleep(min(5.0, max(0.0, max_wait - waited)))


def parse_repeats(items: list[str]) -> dict[int, int]:
    out = dict(REPEATS)
    for it in items:
        if "=" in it:
            b, n = it.split("=", 1)
            out[int(b)] = int(n)
        else:  # one number: the same for every size
            out = {b: int(it) for b in out} | {"*": int(it)}
    return out


def repeats_for(table: dict, b: int) -> int:
    if b in table:
        return table[b]
    if "*" in table:
        return table["*"]
    return max(3, min(v for k, v in table.items() if k != "*"))


def print_case(r: dict, took: float, waited: float, run: str) -> None:
    if "error" in r:
        print(f"{r['name']:12s} B={r['b']:5d}  FAILED: {r['error']}", flush=True)
        return
    print(f"{r['name']:12s} B={r['b']:5d}  A={r['a']:5d} W={r['w']:5d}  "
          f"step {fmt_ms(r['ms'])} ms (select {fmt_ms(r['select_ms'])}, objective "
          f"{fmt_ms(r['objective_ms'])}"
          + (f", update {fmt_ms(r['update_ms'])}" if r["update"] else "")
          + (f"; encodes {fmt_ms(r['encode_ms'])} apart" if r["encode_ms"] else "")
          + f")  {'per-anchor ' if r['per_anchor'] else ''}floor "
          f"{fmt_ms(r['floor_ms'])} ms  x{r['pair_ratio']:.2f} (medians "
          f"x{r['ms'] / r['floor_ms']:.2f})  "
          f"RSS +{r['rss_mb']:,.0f} MB  largest {r['largest_desc']}  "
          f"[{run}{r['repeats']} reps, {r['warmup']} warm-up, {took:.0f} s, others' CPU "
          f"{r['others']:.0%}"
          + (f", waited {waited:.0f} s for quiet" if waited > 1 else "") + "]", flush=True)


def median_run(runs: list[dict]) -> dict:
    """The run with the median ratio (the lower middle one of an even count), with every run's
    ratio attached; a failed run, if any, stands for the case."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r["pair_ratio"])
    return ordered[(len(ordered) - 1) // 2] | {"run_ratios": [r["pair_ratio"] for r in runs]}


def fmt_ms(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--strategies", nargs="+", default=None,
                    help="strategy names (default: every registered one)")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=list(SIZES))
    ap.add_argument("--repeats", nargs="+", default=[],
                    help="timed steps per case: one number for all, or B=N items "
                         f"(default {' '.join(f'{b}={n}' for b, n in REPEATS.items())})")
    ap.add_argument("--rounds", type=int, default=None,
                    help="fresh-process runs of each case, in rounds over the strategies; the "
                         "run with the median ratio is reported (default "
                         f"{' '.join(f'{b}={n}' for b, n in ROUNDS.items())}, 1 beyond)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed steps before timing (stateful strategies add the steps that "
                         "fill their state)")
    ap.add_argument("--n-train", type=int, default=50_000, help="rows of the fake encoder table")
    ap.add_argument("--peer-batch-sizes", nargs="+", type=int, default=[256, 512],
                    help="batch sizes for the pytorch-metric-learning peer (1024 runs out of "
                         "memory for NT-Xent on a 23 GB machine: add it to try)")
    ap.add_argument("--peer-repeats", type=int, default=None,
                    help="repeats of each peer case (default: miner 7/5, NT-Xent 3/2 at "
                         "B=256/512, the least of those beyond)")
    ap.add_argument("--no-peer", action="store_true", help="skip the peer comparison")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a knob of the strategies timed, e.g. support=2 for fnc (repeatable); "
                         "the rows are named with it")
    ap.add_argument("--fn-filter", default="none", choices=FILTERS,
                    help="a false-negative filter after each strategy's selection (its time "
                         "counts as select); rows named STRATEGY x FILTER")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    ap.add_argument("--quiet", type=float, default=0.2,
                    help="before each case, wait while other processes use more than this "
                         "share of the machine (default 0.2; 1 disables the wait)")
    ap.add_argument("--max-wait", type=float, default=120.0,
                    help="most seconds to wait for quiet before a case (then it runs anyway, "
                         "its contention shown in the others' CPU column)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sets = parse_sets(args.sets)  # KEY=VALUE: a bad one is a one-line error in the case
    shown_sets = f" ({', '.join(f'{k}={v}' for k, v in sets.items())})" if sets else ""
    if args.fn_filter != "none":
        shown_sets = f" x {args.fn_filter}" + shown_sets
    if args.worker is not None:
        worker(json.loads(args.worker))
        return

    torch.set_num_threads(args.threads)
    names = args.strategies or strategies.names()
    for n in names:
        strategies.get(n)  # unknown names fail now, with suggestions
    reps = parse_repeats(args.repeats)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} "
          f"(cpu_count {os.cpu_count()}), D={D}, tau={TAU}, n_train={args.n_train:,}, "
          f"seed {args.seed}")
    try:
        import pytorch_metric_learning as pml
        print(f"pytorch-metric-learning {pml.__version__}")
    except ImportError:
        pml = None
        print("pytorch-metric-learning not installed (pip install -e '.[bench]'): no peer")
    print("each case runs in a fresh subprocess; strategy and floor steps interleaved; medians\n",
          flush=True)

    rows = []
    t_start = time.perf_counter()
    for b in args.batch_sizes:
        rounds = args.rounds if args.rounds is not None else ROUNDS.get(b, 1)
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for rnd in range(rounds):
            for name in names:
                spec = {"kind": "strategy", "name": name, "b": b, "n_train": args.n_train,
                        "repeats": repeats_for(reps, b), "warmup": args.warmup,
                        "seed": args.seed, "threads": args.threads, "sets": sets,
                        "fn_filter": args.fn_filter}
                waited = wait_for_quiet(args.quiet, args.max_wait)
                t = time.perf_counter()
                r = in_child(spec, args.timeout) | {"name": name + shown_sets, "b": b}
                runs[name].append(r)
                print_case(r, time.perf_counter() - t, waited,
                           f"run {rnd + 1}/{rounds}, " if rounds > 1 else "")
        for name in names:
            rows.append(median_run(runs[name]))

    peer_rows = []
    if not args.no_peer and pml is not None:
        print("\npeer: pytorch-metric-learning", flush=True)
        for b in args.peer_batch_sizes:
            for kind in ("miner", "ntxent"):
                table = PEER_REPEATS[kind]
                n = args.peer_repeats or table.get(b, min(table.values()))
                spec = {"kind": kind, "b": b, "n_train": args.n_train, "repeats": n,
                        "seed": args.seed, "threads": args.threads}
                waited = wait_for_quiet(args.quiet, args.max_wait)
                t = time.perf_counter()
                r = in_child(spec, args.timeout) | {"kind": kind, "b": b}
                peer_rows.append(r)
                took = time.perf_counter() - t
                if "error" in r:
                    print(f"{kind:6s} B={b:5d}  FAILED: {r['error']}", flush=True)
                    continue
                line = (f"{kind:6s} B={b:5d}  negbench {fmt_ms(r['ours_ms'])} ms  peer "
                        f"{fmt_ms(r['peer_ms'])} ms  x{r['peer_ms'] / r['ours_ms']:,.0f}  "
                        f"[{n} reps, peak RSS {r['rss_mb']:,.0f} MB, {took:.0f} s, others' CPU "
                        f"{r['others']:.0%}"
                        + (f", waited {waited:.0f} s for quiet" if waited > 1 else "") + "]")
                if kind == "miner":
                    f64, f32 = r["f64"], r["f32"]
                    sd = r["default_ms"]
                    line += (f"\n       semi-hard with its default config (fallback=nearest): "
                             f"{fmt_ms(sd)} ms, x{r['peer_ms'] / sd:,.0f}")
                    line += (f"\n       same pairs (float64): {'yes' if f64['same'] else 'no'} "
                             f"(negbench {f64['ours']:,}, peer {f64['peer']:,}, "
                             f"both {f64['both']:,}); float32: "
                             f"{'yes' if f32['same'] else 'no'} (negbench {f32['ours']:,}, "
                             f"peer {f32['peer']:,}, both {f32['both']:,})")
                print(line, flush=True)

    print(f"\ntotal {time.perf_counter() - t_start:.0f} s\n")
    print("Step = select + info_nce forward/backward (+ update where marked), without the time "
          "spent in the fake encoder (ctx.encode: the encoder's work, shown apart); floor = "
          "F.cross_entropy on (A, 1+W) logits from one matmul against shared candidates, or "
          "(per-anchor, for index-form selections) from one batched product with each "
          "anchor's own (1+W, D) candidates, forward/backward. Ratio: the median over the "
          "timed pairs of step / floor; of a case run in several fresh processes, the run with "
          "the median ratio (every run's ratio listed). Target: ratio <= 2. Largest "
          "tensor: elements relative to A x W. Others' CPU: the share of the machine that "
          "other processes used while the case was timed (contention).\n")
    print("| strategy | B | A x W | median ms | select / objective / update ms | encodes ms | "
          "floor ms | ratio | ratio of medians | target 2x | runs' ratios | peak note | "
          "others' CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['name']} | {r['b']} | | failed: {r['error']} | | | | | | | | | |")
            continue
        ratio = r["pair_ratio"]
        parts = (f"{fmt_ms(r['select_ms'])} / {fmt_ms(r['objective_ms'])} / "
                 + (fmt_ms(r["update_ms"]) if r["update"] else "-"))
        rel = r["largest"] / (r["a"] * r["w"])
        print(f"| {r['name']}{' (+update)' if r['update'] else ''} | {r['b']} | "
              f"{r['a']} x {r['w']} | {fmt_ms(r['ms'])} | {parts} | "
              f"{fmt_ms(r['encode_ms']) if r['encode_ms'] else '-'} | "
              f"{fmt_ms(r['floor_ms'])}{' (per-anchor)' if r['per_anchor'] else ''} | "
              f"{ratio:.2f} | {r['ms'] / r['floor_ms']:.2f} | {'ok' if ratio <= 2 else 'MISS'} | "
              f"{', '.join(f'{x:.2f}' for x in r['run_ratios'])} | RSS +{r['rss_mb']:,.0f} MB; "
              f"largest {r['largest_desc']} = {rel:.2f} x AW | {r['others']:.0%} |")
    if peer_rows:
        print("\n| peer case | B | negbench ms | pytorch-metric-learning ms | speed-up | target | "
              "same pairs (float64) | others' CPU |")
        print("|---|---|---|---|---|---|---|---|")
        for r in peer_rows:
            label = ("semi-hard select vs TripletMarginMiner(semihard)" if r["kind"] == "miner"
                     else "in-batch select+info_nce vs NTXentLoss, fwd+bwd")
            if "error" in r:
                print(f"| {label} | {r['b']} | | failed: {r['error']} | | | | |")
                continue
            speed = r["peer_ms"] / r["ours_ms"]
            target, same = "", ""
            if r["kind"] == "miner":
                target = (">= 100x: " + ("ok" if speed >= 100 else "MISS")) if r["b"] == 512 \
                    else ""
                f = r["f64"]
                same = (f"{'yes' if f['same'] else 'no'} ({f['ours']:,} vs {f['peer']:,}, "
                        f"{f['both']:,} in both)")
                label += (f" (default config: {fmt_ms(r['default_ms'])} ms, "
                          f"{r['peer_ms'] / r['default_ms']:,.0f}x)")
            print(f"| {label} | {r['b']} | {fmt_ms(r['ours_ms'])} | {fmt_ms(r['peer_ms'])} | "
                  f"{speed:,.0f}x | {target} | {same} | {r['others']:.0%} |")


if __name__ == "__main__":
    main()
