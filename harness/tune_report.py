"""What ``negbench tune`` reports: a study's summary (default against best), the tables per suite,
and ``--export``, the best configuration of every study as TOML for an ablation spec's
``tuned = "FILE"`` (see :mod:`negbench.harness.tune`)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from negbench.harness.config import ConfigError
from negbench.harness.redact import redact
from negbench.harness.tune_job import Tally, counts, open_storage, quiet_optuna, tally
from negbench.harness.tune_settings import ATTR_DEFAULT, ATTR_ORIGIN, ATTR_SETTINGS


@dataclass
class Summary:
    name: str
    suite: str
    strategy: str
    tally: Tally
    default: float | None
    best: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    seconds: float
    settings: dict
    origin: dict  # {"command", "commit"} of the process that created the study ({} before)

    @property
    def gain(self) -> float | None:
        if self.best is None or self.default is None:
            return None
        return self.best - self.default


def summarize(study) -> Summary:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(done, key=lambda t: (t.value, -t.number)) if done else None
    default = next((t.value for t in done if t.user_attrs.get(ATTR_DEFAULT)), None)
    seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                  if counts(t) and t.datetime_start and t.datetime_complete)
    _, suite, strategy = study.study_name.split(":", 2)
    return Summary(study.study_name, suite, strategy, tally(trials), default,
                   None if best is None else best.value, None if best is None else best.number,
                   {} if best is None else dict(best.params), seconds,
                   study.user_attrs.get(ATTR_SETTINGS, {}), study.user_attrs.get(ATTR_ORIGIN, {}))


def summary_tables(summaries: list[Summary], trials_wanted: int | None = None) -> list:
    """A rich table per suite: strategy, trials (complete/pruned/failed), default and best val
    kNN, gain, and the time spent in its trials."""
    from rich.table import Table

    out = []
    for suite in dict.fromkeys(s.suite for s in summaries):
        rows = [s for s in summaries if s.suite == suite]
        budget = rows[0].settings.get("budget", "?")
        t = Table(title=f"tuning on {suite} ({budget}, val kNN accuracy; test split unused)")
        for c, j in (("strategy", "left"), ("trials (complete/pruned/failed)", "right"),
                     ("default val kNN", "right"), ("best val kNN", "right"),
                     ("gain", "right"), ("best trial", "right"), ("trial time s", "right")):
            t.add_column(c, justify=j)
        for s in sorted(rows, key=lambda s: -(s.best if s.best is not None else -1)):
            n = s.tally
            want = f" of {trials_wanted}" if trials_wanted and n.counted < trials_wanted else ""
            gain = "-" if s.gain is None else f"{s.gain:+.4f}"
            extra = f", {n.interrupted} interrupted" if n.interrupted else ""
            t.add_row(s.strategy,
                      f"{n.counted}{want} ({n.complete}/{n.pruned}/{n.failed}){extra}",
                      "-" if s.default is None else f"{s.default:.4f}",
                      "-" if s.best is None else f"{s.best:.4f}", gain,
                      "-" if s.best_trial is None else str(s.best_trial),
                      f"{s.seconds:,.1f}")
        out.append(t)
    return out



def export_best(storage_url: str, prefix: str, path: str | Path) -> list[Summary]:
    """Write the best configuration of every study ``PREFIX:SUITE:STRATEGY`` in the storage as
    TOML tables ``[SUITE.STRATEGY]``; the summaries of the studies written."""
    import optuna

    quiet_optuna()
    storage = open_storage(storage_url, create=False)
    names = sorted(n for n in optuna.get_all_study_names(storage)
                   if n.startswith(f"{prefix}:") and n.count(":") == 2)
    if not names:
        raise ConfigError(f"no study named {prefix}:SUITE:STRATEGY in "
                          f"{redact(storage_url)} (see --study)")
    summaries = [summarize(optuna.load_study(study_name=n, storage=storage)) for n in names]
    written = [s for s in summaries if s.best is not None]
    if not written:
        raise ConfigError(f"none of the {len(names)} studies under {prefix!r} in "
                          f"{redact(storage_url)} has a completed trial yet")
    from negbench.harness.spec import tunable_key
    from negbench.harness.tracking import command_line, git_commit

    lines = [f"# the best configuration of each study {prefix}:SUITE:STRATEGY in "
             f"{redact(storage_url)}, written by `negbench tune --export`",
             f"# exported by: {command_line()} (negbench commit {git_commit()})",
             "# values: the searched dotted run keys of the best completed trial (validation kNN "
             "accuracy), and the run keys the study held with --set (marked held);",
             "# an ablation spec applies them with: tuned = \"<this file>\""]
    for s in written:
        n = s.tally
        lines += ["", f"# study {s.name}: best val kNN {s.best:.4f} (trial {s.best_trial}), "
                      f"default {'-' if s.default is None else f'{s.default:.4f}'}; "
                      f"{n.counted} trials ({n.complete} complete, {n.pruned} pruned, "
                      f"{n.failed} failed)",
                  f"# tuned under budget {s.settings.get('budget', '?')}, seed "
                  f"{s.settings.get('seed', '?')}"
                  + "".join(f", --set {k}={v}" for k, v in s.settings.get("sets", {}).items()),
                  f"# tuned by: {redact(s.origin.get('command', 'not recorded'))} (negbench "
                  f"commit {s.origin.get('commit', 'not recorded')})",
                  f"[{_toml_key(s.suite)}.{_toml_key(s.strategy)}]"]
        for k, v in sorted(s.best_params.items()):
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in sorted(s.settings.get("sets", {}).items()):
            # a held knob is part of the configuration tuned (batch size, eval.* are not)
            if k not in s.best_params and tunable_key(k):
                lines.append(f"{_toml_key(k)} = {_toml_value(_typed(v))}  # held, not searched")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + "\n")
    return written


def _typed(text: Any) -> Any:
    """A --set value (text) as the TOML scalar it reads as: int, float, bool or string."""
    if not isinstance(text, str):
        return text
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigError(f"cannot export the non-finite value {v}")
        return repr(v)
    if v is None:
        return '"none"'
    return json.dumps(str(v))
