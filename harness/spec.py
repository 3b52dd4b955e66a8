"""Ablation specs: a TOML file naming suites x strategies x seeds under one budget, expanded into
cells, each a fully resolved :class:`~negbench.harness.config.RunConfig` with a stable identity.

Format (every key but ``suites`` and ``strategies`` optional)::

    name = "demo"                    # the mlflow experiment; default: the file's stem
    plugins = ["my_strategy.py"]     # plugins to import first (files relative to this spec,
                                     # or modules): their strategies and suites may be named
    suites = ["digits", "bbc-news"]
    strategies = "all"               # or a list of registered names
    seeds = 3                        # a count (seeds 0..2) or a list of seeds
    budget = "samples=60000"         # one budget for every cell; default: each suite's own
    tuned = "tuned.toml"             # a `negbench tune --export` file (path relative to this
                                     # spec), or a list of them (each (suite, strategy) in one
                                     # file): its values for a (suite, strategy) apply to those
                                     # cells
    also_default = true              # with tuned: run every tuned cell at the registry's
                                     # defaults too, so the report sets tuned against default

    [objective]                      # the objective of every cell (objective.* keys)
    temperature = 0.2

    [overrides]                      # dotted run keys for every cell, as `--set` takes them
    "optim.lr" = 0.002

    [strategy.memory-bank]           # that strategy's own config keys, and dotted run keys
    K = 1024                         # for its cells only (as `--set`)
    "optim.lr" = 0.001

    [suite.bbc-news]                 # per suite: its budget, and dotted keys as `--set`
    budget = "samples=20000"
    "suite.vocab_size" = 8000

    fn_filters = ["none", "self-guided"]  # a false-negative filter after each strategy's
                                     # selection (strategy.fn_filter): one more axis; each
                                     # filter is a row of its own ("semi-hard x self-guided")

    [sweep]                          # more axes of the grid: dotted keys (as `--set`), each
    "suite.classes" = [10, 5, 2]     # with a list of values; every combination is run

Every error names the file, the key and what is allowed; unknown keys are errors. A cell's
identity is a hash of its resolved config (suite, strategy, seed, budget, every knob), so a cell
is the same cell whichever spec file or order produced it.

Tuned values (``tuned = "FILE"``): FILE holds tables ``[SUITE.STRATEGY]`` of dotted run keys
(``"optim.lr" = 0.0012``, ``"strategy.K" = 512``), as ``negbench tune --export`` writes them
(harness.tune). A cell whose suite and strategy have a table there gets those values on top of
the spec's ``[objective]`` and ``[overrides]``; a key that the spec's own ``[strategy.NAME]`` or
``[suite.NAME]`` table sets to another value is an error naming both places (tuned values are
meant to be the cell's: remove one). Tables for suites or strategies the spec does not run are
ignored. Such a cell carries the tag ``negbench.tuned`` = FILE's name (:attr:`Cell.tags`); its
key is still the hash of its resolved config, so a tuned cell is a different cell from the
untuned one. With ``also_default = true`` the grid holds both: each (suite, strategy) that
has tuned values is run tuned and at its defaults (the report's "tuned against default" table
compares them, seed by seed); pairs without tuned values run once, and so do pairs whose tuned
values are the defaults (tagged ``negbench.tuned_same``: one run is both).

Sweeps (``[sweep]``): the grid is suites x strategies x every combination of the sweep's values
x seeds. A swept value applies on top of everything else (a key the spec sets elsewhere too is
an error). Each cell carries the tag ``negbench.sweep`` (``suite.classes=5``; several keys
joined by ", "), and the report gives each combination its own section
(``fashion-mnist (suite.classes=5)``), since a different grouping or knob is a different
question, not another row of the same ranking.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negbench import NegbenchError, strategies, suites
from negbench.harness.config import ConfigError, RunConfig, build_config, parse_budget
from negbench.harness.tags import SWEEP_TAG, TUNED_SAME_TAG, TUNED_TAG, TUNED_VAL_TAG
from negbench.strategies.registry import PluginError, load_plugin

TOP_KEYS = ("name", "suites", "strategies", "seeds", "budget", "tuned", "objective",
            "overrides", "strategy", "suite", "sweep", "fn_filters", "plugins", "also_default")
OBJECTIVE_KEYS = ("name", "temperature", "margin", "hardness_alpha")


class SpecError(NegbenchError, ValueError):
    """A spec file is invalid; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class Cell:
    """One run of an ablation: a resolved config, its identity, and tags for its run."""

    config: RunConfig
    key: str  # hash of the resolved config
    # tags the cell's run carries besides the usual ones: {TUNED_TAG: FILE name} for a
    # cell with tuned values (compared, not hashed: a dict)
    tags: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def section(self) -> str:
        """The suite, with the cell's sweep point: ``digits (suite.classes=2)``."""
        point = f" ({self.tags[SWEEP_TAG]})" if SWEEP_TAG in self.tags else ""
        return self.config.suite + point

    @property
    def variant(self) -> str:
        """The strategy, with the cell's false-negative filter and whether it is tuned:
        ``semi-hard x self-guided (tuned)``."""
        c = self.config
        tuned = TUNED_TAG in self.tags and TUNED_SAME_TAG not in self.tags
        return (c.strategy + (f" x {c.fn_filter}" if c.fn_filter != "none" else "")
                + (" (tuned)" if tuned else ""))

    @property
    def label(self) -> str:
        c = self.config
        point = f" ({self.tags[SWEEP_TAG]})" if SWEEP_TAG in self.tags else ""
        return f"{c.suite}/{self.variant}{point}/seed {c.seed}"


@dataclass(frozen=True)
class Spec:
    path: str
    name: str
    suites: tuple[str, ...]
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    budget: str | None
    objective: dict[str, Any]
    overrides: dict[str, Any]
    per_strategy: dict[str, dict[str, Any]]
    per_suite: dict[str, dict[str, Any]]
    tuned_path: str | None = None  # the `tuned` file(s), as found (relative to the spec), "; "
    tuned: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # suite/strategy
    sweep: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # dotted key -> values
    tuned_files: dict[str, dict[str, str]] = field(default_factory=dict)  # suite/strategy: file
    fn_filters: tuple[str, ...] = ("none",)  # strategy.fn_filter values, one more axis
    also_default: bool = False  # tuned pairs run at their defaults too
    # suite/strategy: the tuning's validation figures, as the export's comments give them
    tuned_val: dict[str, dict[str, str]] = field(default_factory=dict)

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the sweep's values ([{}] without a sweep)."""
        keys = list(self.sweep)
        return [dict(zip(keys, vals, strict=True))
                for vals in itertools.product(*(self.sweep[k] for k in keys))]

    def cells(self) -> list[Cell]:
        """The grid, suites x strategies (tuned, and at defaults too with ``also_default``) x
        filters x sweep points x seeds, in that order (so a suite's cells run together)."""
        out = []
        for su in self.suites:
            for st in self.strategies:
                axes = [(flt, point, seed) for flt in self.fn_filters for point in self.points()
                        for seed in self.seeds]
                tuned = [self._cell(su, st, seed, point, flt) for flt, point, seed in axes]
                if not (self.also_default and st in self.tuned.get(su, {})):
                    out += tuned
                    continue
                default = [self._cell(su, st, seed, point, flt, use_tuned=False)
                           for flt, point, seed in axes]
                if [c.key for c in default] == [c.key for c in tuned]:
                    # the tuning kept the defaults (its best trial was the enqueued defaults):
                    # one run is both, tagged so the report says so rather than "no default run"
                    out += [dataclasses.replace(c, tags={**c.tags, TUNED_SAME_TAG: "1"})
                            for c in tuned]
                else:
                    out += default + tuned
        return out

    def _cell(self, suite: str, strategy: str, seed: int,
              point: dict[str, Any] | None = None, fn_filter: str = "none",
              use_tuned: bool = True) -> Cell:
        sets: dict[str, str] = {}
        sets.update({f"objective.{k}": _text(v) for k, v in self.objective.items()})
        sets.update({k: _text(v) for k, v in self.overrides.items()})
        su = dict(self.per_suite.get(suite, {}))
        budget = su.pop("budget", None) or self.budget
        sets.update({k: _text(v) for k, v in su.items()})
        for k, v in self.per_strategy.get(strategy, {}).items():  # dotted keys: run settings
            sets[_strategy_key(k)] = _text(v)
        tuned = self.tuned.get(suite, {}).get(strategy) if use_tuned else None
        where = f"{self.path}: cell {suite}/{strategy}/seed {seed}"
        tags = {}
        if tuned is not None:
            sets.update({k: _text(v) for k, v in tuned.items()})
            path = self.tuned_files.get(suite, {}).get(strategy, self.tuned_path)
            tags[TUNED_TAG] = Path(path).name
            if strategy in self.tuned_val.get(suite, {}):
                tags[TUNED_VAL_TAG] = self.tuned_val[suite][strategy]
            where += f" (with the tuned values of {path} [{suite}.{strategy}])"
        if fn_filter != "none":
            sets["strategy.fn_filter"] = fn_filter
            where += f" (fn_filter {fn_filter})"
        if point:
            label = ", ".join(f"{k}={_text(v)}" for k, v in point.items())
            sets.update({k: _text(v) for k, v in point.items()})
            tags[SWEEP_TAG] = label
            where += f" ({label})"
        try:
            cfg = build_config(suite, strategy, seed=seed,
                               budget=parse_budget(budget) if budget else None, sets=sets)
        except ConfigError as e:
            raise SpecError(f"{where}: {e}") from None
        return Cell(cfg, cell_key(cfg), tags)


# knobs added after cells were first recorded: at the value that means what their absence
# meant they are left out of the hash, so the cells a store holds keep their identity (and are
# not run again) across an upgrade; path in asdict(cfg) -> that value
_ADDED_KNOBS: dict[tuple[str, ...], Any] = {
    ("objective", "hardness_alpha"): 0.0,
    ("fn_filter",): "none",
}


def cell_key(cfg: RunConfig) -> str:
    """A stable hash of a resolved run config (16 hex digits). Knobs added since the first
    release are hashed only where they differ from the value their absence meant (a suite's
    ``classes`` at its own classes, ``_ADDED_KNOBS``)."""
    d = dataclasses.asdict(cfg)
    for path, value in _ADDED_KNOBS.items():
        *head, last = path
        parent = d
        for k in head:
            parent = parent.get(k, {})
        if last in parent and _same(parent[last], value):
            del parent[last]
    sc = d.get("suite_cfg") or {}
    if "classes" in sc and suites.get(cfg.suite).coarser_grouping(cfg.suite_cfg) is None:
        del sc["classes"]  # the suite's own classes
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _text(v: Any) -> str:
    """A TOML value as the text ``--set`` takes."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _strategy_key(k: str) -> str:
    """A ``[strategy.NAME]`` key as a dotted run key (an undotted one is the strategy's knob)."""
    return k if "." in k else f"strategy.{k}"


def _same(a: Any, b: Any) -> bool:
    """Two spec values set the same thing (numbers compared as numbers)."""
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return _text(a) == _text(b)


def _names(value: Any, key: str, allowed: list[str], path: str) -> tuple[str, ...]:
    if value == "all":
        return tuple(allowed)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{path}: {key} must be \"all\" or a non-empty list of names; allowed: "
                        f"{', '.join(allowed)}")
    for v in value:
        if v not in allowed:
            raise SpecError(f"{path}: {key}: unknown name {v!r}; allowed: {', '.join(allowed)}")
    if len(set(value)) != len(value):
        raise SpecError(f"{path}: {key} lists a name twice")
    return tuple(value)


def _table(value: Any, key: str, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{path}: {key} must be a table ([{key}] ...)")
    for k, v in value.items():
        if isinstance(v, dict | list):
            raise SpecError(f"{path}: {key}.{k} must be a single value (a number, string or "
                            "boolean)")
    return value


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; every cell is resolved once, so a bad override fails
    here, before anything runs."""
    p = Path(path)
    where = str(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise SpecError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{where}: cannot read it ({type(e).__name__})") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{where}: not valid TOML ({e})") from None
    for k in raw:
        if k not in TOP_KEYS:
            raise SpecError(f"{where}: unknown key {k!r}; allowed: {', '.join(TOP_KEYS)}")
    plugins = raw.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(v, str) and v for v in plugins):
        raise SpecError(f"{where}: plugins must be a list of files or module names; "
                        f"got {plugins!r}")
    for ref in plugins:  # before any name is looked up: they may register strategies and suites
        try:
            load_plugin(ref, base=p.parent)
        except PluginError as e:
            raise SpecError(f"{where}: {e}") from None
    for k in ("suites", "strategies"):
        if k not in raw:
            raise SpecError(f"{where}: missing key {k!r} (a list of names, or \"all\")")
    name = raw.get("name", p.stem)
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"{where}: name must be a non-empty string")
    su = _names(raw["suites"], "suites", suites.names(), where)
    st = _names(raw["strategies"], "strategies", strategies.names(), where)
    seeds = raw.get("seeds", 1)
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seed_list = tuple(range(seeds))
    elif (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool)
                                                   and s >= 0 for s in seeds)
          and len(set(seeds)) == len(seeds)):
        seed_list = tuple(seeds)
    else:
        raise SpecError(f"{where}: seeds must be a count >= 1 or a list of distinct seeds >= 0; "
                        f"got {seeds!r}")
    budget = raw.get("budget")
    if budget is not None:
        _check_budget(budget, "budget", where)
    objective = _table(raw.get("objective", {}), "objective", where)
    for k in objective:
        if k not in OBJECTIVE_KEYS:
            raise SpecError(f"{where}: unknown key objective.{k}; allowed: "
                            f"{', '.join(OBJECTIVE_KEYS)}")
    overrides = _table(raw.get("overrides", {}), "overrides", where)
    for k in overrides:
        if k.split(".")[0] in ("strategy", "suite", "seed", "budget"):
            raise SpecError(f"{where}: overrides.{k}: set strategy and suite knobs in "
                            "[strategy.NAME] and [suite.NAME], the budget with budget = ...")
    per_strategy = _per_name(raw.get("strategy", {}), "strategy", st, where)
    per_suite = _per_name(raw.get("suite", {}), "suite", su, where)
    for sname, table in per_suite.items():
        if "budget" in table:
            _check_budget(table["budget"], f"suite.{sname}.budget", where)
    tuned_path, tuned, tuned_files, tuned_val = None, {}, {}, {}
    if "tuned" in raw:
        files = raw["tuned"] if isinstance(raw["tuned"], list) and raw["tuned"] else [raw["tuned"]]
        shown_all = []
        for value in files:
            shown, one, val = _load_tuned(value, p, where)
            for suite_name, per in val.items():
                tuned_val.setdefault(suite_name, {}).update(per)
            _check_tuned_conflicts(one, shown, per_strategy, per_suite, su, st, where)
            shown_all.append(shown)
            for suite_name, per in one.items():
                for strategy_name, table in per.items():
                    if strategy_name in tuned.get(suite_name, {}):
                        raise SpecError(f"{where}: tuned: [{suite_name}.{strategy_name}] is in "
                                        f"both {tuned_files[suite_name][strategy_name]} and "
                                        f"{shown}; keep it in one file")
                    tuned.setdefault(suite_name, {})[strategy_name] = table
                    tuned_files.setdefault(suite_name, {})[strategy_name] = shown
        tuned_path = "; ".join(shown_all)
    sweep = _sweep(raw.get("sweep", {}), objective, overrides, per_strategy, per_suite, tuned,
                   where)
    fn_filters = _fn_filters(raw.get("fn_filters", ["none"]), where)
    also_default = raw.get("also_default", False)
    if not isinstance(also_default, bool):
        raise SpecError(f"{where}: also_default must be true or false; got {also_default!r}")
    if also_default and "tuned" not in raw:
        raise SpecError(f"{where}: also_default = true needs tuned = \"FILE\" (it runs each "
                        "tuned cell at its defaults too)")
    spec = Spec(where, name.strip(), su, st, seed_list, budget, objective, overrides,
                per_strategy, per_suite, tuned_path, tuned, sweep, tuned_files, fn_filters,
                also_default, tuned_val)
    spec.cells()  # resolve every cell now: a bad knob fails before anything runs
    return spec


def _fn_filters(value: Any, where: str) -> tuple[str, ...]:
    from negbench.harness.filters import FILTERS

    if (not isinstance(value, list) or not value or len(set(map(str, value))) != len(value)
            or any(v not in FILTERS for v in value)):
        raise SpecError(f"{where}: fn_filters must be a non-empty list of distinct filters; "
                        f"allowed: {', '.join(FILTERS)}; got {value!r}")
    return tuple(value)


def _sweep(value: Any, objective: dict, overrides: dict, per_strategy: dict, per_suite: dict,
           tuned: dict, where: str) -> dict[str, tuple[Any, ...]]:
    """The ``[sweep]`` table: dotted keys -> non-empty lists of distinct scalar values, no key
    set elsewhere in the spec."""
    if not isinstance(value, dict):
        raise SpecError(f"{where}: sweep must be a table ([sweep] ...)")
    table = value
    elsewhere = {f"objective.{k}" for k in objective} | set(overrides)
    for t in per_suite.values():
        elsewhere |= {k for k in t if k != "budget"}
    for t in per_strategy.values():
        elsewhere |= {_strategy_key(k) for k in t}
    for by_strategy in tuned.values():
        for t in by_strategy.values():
            elsewhere |= set(t)
    out = {}
    for k, vals in table.items():
        if k.split(".")[0] in ("seed", "budget") or "." not in k:
            raise SpecError(f"{where}: sweep.{k}: a sweep takes dotted keys as --set does "
                            "(suite.classes, strategy.K, optim.lr); seeds and budgets have "
                            "their own keys")
        if (not isinstance(vals, list) or not vals
                or not all(isinstance(v, (int, float, str, bool)) for v in vals)
                or len({_text(v) for v in vals}) != len(vals)):
            raise SpecError(f"{where}: sweep.{k} must be a non-empty list of distinct values; "
                            f"got {vals!r}")
        if k in elsewhere:
            raise SpecError(f"{where}: sweep.{k} is also set elsewhere in the spec; a swept key "
                            "takes its values from the sweep only")
        out[k] = tuple(vals)
    return out


def _check_budget(value: Any, key: str, where: str) -> None:
    if not isinstance(value, str):
        raise SpecError(f"{where}: {key} must be a string KIND=AMOUNT (kinds: samples, steps, "
                        "flops, seconds), e.g. \"samples=60000\"")
    try:
        parse_budget(value)
    except ConfigError as e:
        raise SpecError(f"{where}: {key}: {e}") from None


def _per_name(value: Any, key: str, names: tuple[str, ...], where: str) -> dict:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: {key} must hold tables [{key}.NAME]")
    out = {}
    for n, table in value.items():
        if n not in names:
            raise SpecError(f"{where}: [{key}.{n}]: {n!r} is not among this spec's {key} "
                            f"entries; allowed: {', '.join(names)}")
        out[n] = _table(table, f"{key}.{n}", where)
    return out


TUNED_FORMAT = ('tables [SUITE.STRATEGY] of dotted run keys with single values, e.g. '
                '[digits.memory-bank] "optim.lr" = 0.0012, as `negbench tune --export` writes')


def tunable_key(k: str) -> bool:
    """A key a tuned file may set: a dotted run key, not the budget, the seed or eval.*."""
    return "." in k and k.split(".")[0] not in ("budget", "eval", "seed", "suite_cfg",
                                                "strategy_cfg")


# the line `negbench tune --export` writes above each table (harness.tune_report.export_best)
_STUDY_LINE = re.compile(r"^# study [^:\n]+:(?P<suite>[^:\n]+):(?P<strategy>[^:\n]+): best val kNN "
                         r"(?P<best>[\d.]+) \(trial \d+\), default (?P<default>[\d.]+); "
                         r"(?P<trials>\d+) trials", re.M)


def _load_tuned(value: Any, spec_path: Path, where: str) -> tuple[str, dict, dict]:
    """Read and check the file a spec's ``tuned`` names: (its path as shown, suite -> strategy
    -> dotted key -> value, suite -> strategy -> "DEFAULT BEST TRIALS", the tuning's validation
    kNN accuracy of the default and the best trial and its trial count where the export's
    comments give them)."""
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{where}: tuned must be a file name (a `negbench tune --export` file, "
                        "relative to this spec), e.g. tuned = \"tuned.toml\", or a list of "
                        "them")
    path = Path(value)
    if not path.is_absolute():
        path = spec_path.parent / path
    shown = str(path)
    try:
        text = path.read_text()
        raw = tomllib.loads(text)
    except FileNotFoundError:
        raise SpecError(f"{where}: tuned: {shown}: no such file (write it with `negbench tune "
                        "--export FILE`; a relative path is relative to the spec)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{where}: tuned: {shown}: cannot read it ({type(e).__name__})") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{where}: tuned: {shown}: not valid TOML ({e}); expected "
                        f"{TUNED_FORMAT}") from None
    suite_names, strategy_names = suites.names(), strategies.names()
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for su, per in raw.items():
        if su not in suite_names:
            raise SpecError(f"{where}: tuned: {shown}: [{su}] is not a suite; allowed: "
                            f"{', '.join(suite_names)} ({TUNED_FORMAT})")
        if not isinstance(per, dict):
            raise SpecError(f"{where}: tuned: {shown}: {su} must hold tables [{su}.STRATEGY] "
                            f"({TUNED_FORMAT})")
        for st, table in per.items():
            if st not in strategy_names:
                raise SpecError(f"{where}: tuned: {shown}: [{su}.{st}]: {st!r} is not a "
                                f"strategy; allowed: {', '.join(strategy_names)}")
            if not isinstance(table, dict):
                raise SpecError(f"{where}: tuned: {shown}: {su}.{st} must be a table "
                                f"[{su}.{st}] ({TUNED_FORMAT})")
            for k, v in table.items():
                if isinstance(v, dict | list):
                    raise SpecError(f"{where}: tuned: {shown}: [{su}.{st}] {k!r} must be a "
                                    "single value (a number, string or boolean)")
                if not tunable_key(k):
                    raise SpecError(f"{where}: tuned: {shown}: [{su}.{st}] {k!r}: allowed keys "
                                    "are dotted run keys such as optim.lr, "
                                    "objective.temperature, strategy.KNOB, suite.KNOB (not "
                                    "the budget, the seed or eval.*)")
            out.setdefault(su, {})[st] = dict(table)
    val: dict[str, dict[str, str]] = {}
    for m in _STUDY_LINE.finditer(text):
        if m["strategy"] in out.get(m["suite"], {}):
            val.setdefault(m["suite"], {})[m["strategy"]] = \
                f"{m['default']} {m['best']} {m['trials']}"
    return shown, out, val


def _check_tuned_conflicts(tuned: dict, tuned_path: str, per_strategy: dict, per_suite: dict,
                           su: tuple[str, ...], st: tuple[str, ...], where: str) -> None:
    """A key both a tuned table and the spec's own table for that strategy or suite set, to
    different values, is an error naming both places."""
    for suite in su:
        for strategy in st:
            values = tuned.get(suite, {}).get(strategy)
            if not values:
                continue
            mine = [(f"[strategy.{strategy}]", {_strategy_key(k): v for k, v in
                                                per_strategy.get(strategy, {}).items()}),
                    (f"[suite.{suite}]", per_suite.get(suite, {}))]
            for key, value in values.items():
                for place, table in mine:
                    if key in table and not _same(table[key], value):
                        raise SpecError(
                            f"{where}: {place} sets {key} = {table[key]!r}, and the tuned "
                            f"file {tuned_path} [{suite}.{strategy}] sets {key} = {value!r}; "
                            "remove one of them")
