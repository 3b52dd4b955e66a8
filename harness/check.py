"""``negbench check strategy NAME`` and ``negbench check suite NAME``: the registry's contract,
run against one strategy or suite (a plugin's above all) and printed as a pass/fail table.

A strategy is checked on a fixed table of unit vectors standing in for an encoder (300 items,
16 dimensions, batches of 8: :class:`Table` and :func:`make_ctx`, which the tests use too), then
in a short real run on digits:

- **declares**: a paper, a frozen dataclass ``Config`` whose ``space`` names its fields and
  holds its defaults;
- **shapes**: three steps of ``select``/``update`` return well-formed ``Negatives`` and a finite
  InfoNCE loss, every anchor with a negative by the last step;
- **own instance**: no anchor's own instance selected, no index outside the pool, no negative
  or non-finite weight (:meth:`Strategy.check`);
- **no labels**: the context's ``labels`` is a trap that fails on any use; a strategy that is not
  an oracle reference must never touch it (the trainer gives it None);
- **no host sync**: no tensor read back to the host (``item``, ``tolist``, a data-dependent
  ``if``, ...) while it selects, the objective and the meter run and it updates;
- **same seed, same output**: the selection repeats under the same seeds;
- **within budget**: a real run on digits spends exactly its budget, with a finite loss and a
  counted cost.

A suite is checked on its own data (``--set suite.KEY=VALUE`` as for ``negbench run``): data
present, splits well formed and disjoint, views random but reproducible, the encoder's
interface, and a short real in-batch run whose loss is finite and whose metrics are in range.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from negbench.strategies import Choice, Float, Int, StepContext


@dataclass
class Result:
    check: str
    ok: bool | None  # None: not judged (another check's failure explains it)
    detail: str


# --------------------------------------------------------------------------- a fake encoder
class Table:
    """A fake encoder over N items: row i of a fixed (N, D) table of unit vectors."""

    def __init__(self, n: int, d: int, seed: int = 0, device: str = "cpu"):
        g = torch.Generator().manual_seed(seed)
        self.z = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device)
        self.encoded = 0
        self.refreshes = 0

    def encode(self, ids: torch.Tensor, grad: bool) -> torch.Tensor:
        self.encoded += ids.shape[0]
        return self.z[ids]

    def encode_all(self) -> torch.Tensor:
        self.refreshes += 1
        return self.z.clone()


def make_ctx(ids: torch.Tensor, table: Table, *, step: int = 0, fraction: float = 0.0,
             seed: int = 0, temperature: float = 0.2, mining: list | None = None,
             strategy: str | None = None, labels=None) -> StepContext:
    """A step context over ``table``. With ``strategy`` the name of an oracle reference, it
    holds labels too (item i of the table has label i mod 3), as the trainer gives them to
    oracles alone; ``labels`` given explicitly wins."""
    from negbench import strategies

    g = torch.Generator(device=ids.device).manual_seed(seed)
    charges = mining if mining is not None else []
    n = table.z.shape[0]
    if labels is None and strategy is not None and strategies.get(strategy).oracle:
        labels = torch.arange(n, device=ids.device) % 3
    return StepContext(step=step, fraction=fraction, ids=ids, generator=g,
                       n_train=n, encode=table.encode, encode_all=table.encode_all,
                       charge_mining=charges.append, temperature=temperature, labels=labels)


# --------------------------------------------------------------------------- guards
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu")


class HostRead(AssertionError):
    """A tensor value was read back to the host inside the step."""


@contextlib.contextmanager
def no_host_reads() -> Iterator[None]:
    """Tensor methods that copy a value to the host raise :class:`HostRead` inside the block
    (on a CPU nothing synchronises, so the check is on the API)."""
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def forbid(name):
        def read(self, *a, **k):
            raise HostRead(f"Tensor.{name} inside the step")
        return read

    try:
        for name in READS:
            setattr(torch.Tensor, name, forbid(name))
        yield
    finally:
        for name, f in saved.items():
            setattr(torch.Tensor, name, f)


class LabelRead(AssertionError):
    """A strategy that is not an oracle reference used the oracle labels."""


class LabelTrap:
    """Stands where a context's labels would be: any use (indexing, an attribute, a comparison,
    a torch function) records it and raises :class:`LabelRead`."""

    def __init__(self):
        object.__setattr__(self, "used", [])

    def _trip(self, how: str):
        self.used.append(how)
        raise LabelRead(f"used ctx.labels ({how}); only an oracle reference may read labels")

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        self._trip(f".{name}")

    def __getitem__(self, key):
        self._trip("indexed")

    def __eq__(self, other):
        self._trip("compared")

    __ne__ = __eq__
    __hash__ = object.__hash__

    def __len__(self):
        self._trip("len")

    def __iter__(self):
        self._trip("iterated")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        trap = next(a for a in args if isinstance(a, LabelTrap))
        trap._trip(f"torch {getattr(func, '__name__', func)}")


# --------------------------------------------------------------------------- strategies
N, D, B = 300, 16, 8


def _inputs(step: int, b: int = B):
    g = torch.Generator().manual_seed(step)
    ids = torch.randperm(N, generator=g)[:b]
    q = F.normalize(torch.randn(b, D, generator=g), dim=1)
    k = F.normalize(q + 0.3 * torch.randn(b, D, generator=g), dim=1)
    return ids, q, k


def _steps(name: str, *, steps: int = 3, seed: int = 0, labels=None, guard=None,
           objective: bool = False):
    """``steps`` select/update steps of strategy ``name`` on the fixed table; the Negatives."""
    from negbench import strategies
    from negbench.harness.config import ObjectiveConfig
    from negbench.harness.metrics import NegativeMeter
    from negbench.harness.objectives import make_objective

    torch.manual_seed(seed)
    table = Table(N, D)
    s = strategies.create(name, dim=D, n_train=N)
    obj = make_objective(ObjectiveConfig()) if objective else None
    meter = NegativeMeter(torch.arange(N) % 10) if objective else None
    out = []
    for step in range(steps):
        ids, q, k = _inputs(step)
        q.requires_grad_(objective)
        ctx = make_ctx(ids, table, step=step, fraction=step / steps, seed=seed + step,
                       strategy=name, labels=labels)
        with guard() if guard else contextlib.nullcontext():
            negs = s.select(q, k, ctx)
            if obj is not None:
                res = obj(negs)
                res.loss.backward()
                meter.observe(negs, res.sim)
            s.update(q.detach(), k.detach(), ctx)
        out.append(negs)
    return s, out


def _declares(name: str) -> str:
    from negbench import strategies

    cls = strategies.get(name)
    if not cls.paper:
        raise AssertionError("`paper` is empty: say where the method comes from")
    if not dataclasses.is_dataclass(cls.Config):
        raise AssertionError("Config is not a dataclass")
    if not cls.Config.__dataclass_params__.frozen:
        raise AssertionError("Config is not frozen (@dataclass(frozen=True))")
    cfg = cls.Config()
    fields = {f.name for f in dataclasses.fields(cfg)}
    space = getattr(cls.Config, "space", None)
    if not isinstance(space, dict):
        raise AssertionError("Config has no `space` dict (its search space; {} if none)")
    for key, spec in space.items():
        if key not in fields:
            raise AssertionError(f"space key {key!r} is not a field of Config")
        default = getattr(cfg, key)
        if isinstance(spec, Float | Int):
            if not spec.low <= default <= spec.high:
                raise AssertionError(f"default {key}={default!r} lies outside its space")
        elif not isinstance(spec, Choice) or default not in spec.options:
            raise AssertionError(f"space {key!r}: a Float, Int or Choice holding the default")
    return f"{len(fields)} knobs, {len(space)} tunable" + (", oracle reference" if cls.oracle
                                                            else "")


def _shapes(name: str) -> str:
    from negbench.harness.objectives import info_nce

    _, out = _steps(name)
    for negs in out:
        loss = info_nce(negs, 0.2).loss
        if not torch.isfinite(loss):
            raise AssertionError(f"InfoNCE on its negatives is {float(loss)}")
    if not bool(out[-1].selected().any(dim=1).all()):
        raise AssertionError("an anchor has no negative after three steps")
    last = out[-1]
    return f"{last.num_anchors} anchors, {last.width} candidates each (batch of {B})"


def _own_instance(name: str) -> str:
    s, _ = _steps(name)
    s.check()  # A = 2B = 16 <= CHECK_ROWS: the contract check compares every anchor row
    return "no own instance, index or weight violation in 3 steps"


def _no_labels(name: str) -> str:
    from negbench import strategies

    if strategies.get(name).oracle:
        _steps(name)  # given labels, as the trainer gives them to oracles
        return "oracle reference: reads labels by design (never ranked)"
    trap = LabelTrap()
    try:
        _steps(name, labels=trap)
    except LabelRead:
        pass
    if trap.used:
        raise AssertionError(f"used ctx.labels ({trap.used[0]}); only an oracle reference "
                             "may read labels (set `oracle = True` to make it one)")
    return "never touched ctx.labels"


def _no_host_sync(name: str) -> str:
    _steps(name, guard=no_host_reads, objective=True)
    return "select, objective, meter and update read nothing back"


def _same_seed(name: str) -> str:
    _, a = _steps(name, seed=5)
    _, b = _steps(name, seed=5)
    for x, y in zip(a, b, strict=True):
        same = torch.equal(x.pool, y.pool) and torch.equal(x.selected(), y.selected())
        if x.weights is not None or y.weights is not None:
            same = same and x.weights is not None and y.weights is not None and torch.equal(
                x.weights, y.weights)
        if not same:
            raise AssertionError("two selections under the same seed differ")
    return "3 steps repeated exactly"


def _within_budget(name: str, sets: dict[str, str] | None = None) -> str:
    from negbench.harness.config import BudgetConfig, build_config
    from negbench.harness.runner import run

    budget = 32 * 8
    cfg = build_config("digits", name, seed=0, budget=BudgetConfig("samples", budget),
                       sets={"batch_size": "32", "log_every": "2", "eval.linear_epochs": "5",
                             **(sets or {})})
    r = run(cfg, track=False)
    m = r.metrics
    spent, total = m.get("budget_spent", math.nan), m.get("budget_total", math.nan)
    if spent != total or m.get("samples_seen") != budget:
        raise AssertionError(f"spent {spent} of a budget of {total} samples")
    losses = [h["loss"] for h in r.history]
    if not (losses and all(map(math.isfinite, losses)) and m.get("flops", 0) > 0):
        raise AssertionError(f"losses {losses}, cost {m.get('flops')} FLOPs")
    return f"digits, samples={budget}: spent exactly; {m['flops']:.3g} FLOPs counted"


STRATEGY_CHECKS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("declares", _declares), ("shapes", _shapes), ("own instance", _own_instance),
    ("no labels", _no_labels), ("no host sync", _no_host_sync), ("same seed", _same_seed),
    ("within budget", _within_budget),
)


def _one(check: str, fn: Callable[[], str]) -> Result:
    try:
        return Result(check, True, fn())
    except AssertionError as e:
        return Result(check, False, str(e) or "assertion failed")
    except Exception as e:  # the plugin's own error: where it came from, in one line
        frame = traceback.extract_tb(e.__traceback__)[-1]
        where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
        return Result(check, False, f"{type(e).__name__}: {e}{where}")


def check_strategy(name: str) -> list[Result]:
    """Every strategy check on registered strategy ``name``, in order."""
    from negbench import strategies

    strategies.get(name)  # unknown: RegistryError, one line
    results = [_one(c, lambda f=f: f(name)) for c, f in STRATEGY_CHECKS]
    reads = next(r for r in results if r.check == "no labels")
    if not reads.ok:  # the rest ran with ctx.labels None, as the trainer gives it: not judged
        for r in results:
            if r.check not in ("declares", "no labels") and not r.ok:
                r.ok, r.detail = None, ("not judged: it reads ctx.labels, which a strategy "
                                        f"that is not an oracle gets as None ({r.detail})")
    return results


# --------------------------------------------------------------------------- suites
def check_suite(name: str, sets: dict[str, str] | None = None,
                data_dir: str | None = None) -> list[Result]:
    """Every suite check on registered suite ``name`` with ``suite.*`` overrides ``sets``."""
    from negbench import suites
    from negbench.harness.config import BudgetConfig, build_config

    sets = dict(sets or {})
    cfg = build_config(name, "in-batch", sets=sets)  # bad keys: ConfigError, one line
    suite = suites.create(name, cfg.suite_cfg, data_dir=data_dir)
    status = suite.data_status()
    results = [Result("data", status == "present", "present" if status == "present"
                      else status)]
    if status != "present":
        return results
    box: dict = {}

    def splits() -> str:
        d = box["data"] = suite.load()
        parts = (d.train, d.val, d.test)
        if not all(len(s) for s in parts):
            raise AssertionError("a split is empty: " + "/".join(str(len(s)) for s in parts))
        for s in parts:
            if s.y.dtype != torch.long or s.y.shape != (len(s),):
                raise AssertionError("labels must be (N,) int64")
            if d.labelled and (int(s.y.min()) < 0 or int(s.y.max()) >= d.n_classes):
                raise AssertionError(f"labels must lie in [0, {d.n_classes})")
            if not d.labelled and not bool((s.y == -1).all()):
                raise AssertionError("a suite without labels (n_classes 0) gives labels -1")
        if any(s.source is None or s.source.shape != s.y.shape for s in parts):
            raise AssertionError("each split needs `source`, one index per item")
        joined = torch.cat([s.source for s in parts])
        if joined.unique().numel() != joined.numel():
            raise AssertionError("an item lies in two splits")
        classes = f"{d.n_classes} classes" if d.labelled else "no labels"
        return f"{len(d.train):,}/{len(d.val):,}/{len(d.test):,} items, {classes}, disjoint"

    def views() -> str:
        x = box["data"].train.x[:16]
        v1, v2 = suite.views(x, torch.Generator().manual_seed(0))
        w1, _ = suite.views(x, torch.Generator().manual_seed(0))
        prepared = suite.prepare(x).shape
        if v1.shape != prepared or v2.shape != v1.shape:
            raise AssertionError(f"views {tuple(v1.shape)}, prepared {tuple(prepared)}")
        if torch.equal(v1, v2):
            raise AssertionError("the two views of a batch are identical")
        if not torch.equal(v1, w1):
            raise AssertionError("the same generator seed gave different views")
        return f"{tuple(v1.shape)}: random, reproducible"

    def encoder() -> str:
        x = suite.prepare(box["data"].train.x[:16])
        enc = suite.build_encoder()
        z = enc(x)
        if z.shape != (16, enc.out_dim):
            raise AssertionError(f"forward gave {tuple(z.shape)}, not (16, out_dim={enc.out_dim})")
        if not torch.allclose(z.norm(dim=1), torch.ones(16), atol=1e-4):
            raise AssertionError("forward's projections are not unit-norm")
        f = enc.features(x)
        if f.shape != (16, enc.feature_dim):
            raise AssertionError(f"features gave {tuple(f.shape)}, not (16, {enc.feature_dim})")
        return f"{suite.describe_encoder()}: out_dim {enc.out_dim}, feature_dim {enc.feature_dim}"

    def trains() -> str:
        from negbench.harness.runner import run

        small = build_config(name, "in-batch", budget=BudgetConfig("samples", 32 * 6),
                             sets={**sets, "batch_size": "32", "log_every": "2",
                                   "eval.linear_epochs": "5"})
        r = run(small, track=False, data_dir=data_dir)
        m = r.metrics
        losses = [h["loss"] for h in r.history]
        if not (losses and all(map(math.isfinite, losses))):
            raise AssertionError(f"losses {losses}")
        bad = [k for k in ("knn_acc", "linear_acc", "fnr") if k in m and not 0 <= m[k] <= 1]
        if bad:
            raise AssertionError(f"out of [0, 1]: {', '.join(bad)}")
        shown = ", ".join(f"{k} {m[k]:.3f}" for k in ("knn_acc", "linear_acc") if k in m)
        return f"in-batch, samples={32 * 6}: final loss {losses[-1]:.3f}, {shown}"

    for check, fn in (("splits", splits), ("views", views), ("encoder", encoder),
                      ("trains", trains)):
        results.append(_one(check, fn))
        if not results[-1].ok and check == "splits":
            break
    return results


__all__ = ["HostRead", "LabelRead", "LabelTrap", "Result", "STRATEGY_CHECKS", "Table",
           "check_strategy", "check_suite", "make_ctx", "no_host_reads"]
