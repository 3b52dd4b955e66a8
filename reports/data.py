"""Tracked runs, read back through mlflow into pandas.

One row per run: its identity (tags ``suite``, ``strategy``, ``seed``, ``budget``, and
``negbench.tuned`` for a tuned config; a run tagged ``negbench.sweep``, a spec's sweep point,
has the suite column ``SUITE (POINT)``, a section of its own in the report, and a run on the
user's own files, tagged ``negbench.data``, ``SUITE [NAME@HASH]``), its status, its
provenance tags and its final metrics (mlflow's latest value of each key: the values every run
logs when it ends). Training curves come from metric histories, fetched only for the metrics
the curves draw.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd

from negbench.harness.config import ConfigError
from negbench.harness.tags import DATA_TAG, FILTER_TAG, SWEEP_TAG, TUNED_TAG, TUNED_VAL_TAG

IDENTITY = ("suite", "strategy", "seed", "budget")
# the metric histories the curves draw; ``budget_fraction`` is their x axis
CURVES = ("loss", "fnr", "hardness", "lr")
X_AXIS = "budget_fraction"
# columns of the runs frame that are not metrics
# per-item correctness (artifact ITEMS_FILE): accuracy metric -> the frame's column of its
# '0'/'1' string; ``items_split`` names the split
ITEMS_FILE = "items.json"
ITEM_COLUMNS = {"knn_acc": "knn_correct", "linear_acc": "linear_correct"}
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
RUN_COLUMNS = ("run_id", "run_name", "status", "start_time", "end_time", "suite", "strategy",
               "seed", "budget", "tuned", "tuned_val", "fn_filter", "variant", "failure", "tags",
               *ITEM_COLUMNS.values(), "items_split")


def section_name(tags: dict) -> str:
    """A run's section: its suite, with the spec's sweep point in parentheses and, for a suite on
    the user's own files, which files in brackets (two files never share a section)."""
    name = tags["suite"]
    if tags.get(SWEEP_TAG):
        name += f" ({tags[SWEEP_TAG]})"
    if tags.get(DATA_TAG):
        name += f" [{tags[DATA_TAG]}]"
    return name


def client(uri: str | None):
    from mlflow import MlflowClient

    from negbench.harness.store import resolve_uri

    for name in ("alembic", "mlflow"):  # a new sqlite store's migration chatter
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=resolve_uri(uri))


def _all_runs(c, experiment_ids: list[str], order_by: list[str] | None = None,
              max_results: int | None = None) -> list:
    out, token = [], None
    while True:
        page = c.search_runs(experiment_ids, max_results=min(max_results or 1000, 1000),
                             order_by=order_by, page_token=token)
        out.extend(page)
        token = page.token
        if not token or (max_results is not None and len(out) >= max_results):
            return out


def experiments(uri: str | None) -> list[tuple[str, int, int]]:
    """(name, finished runs, all runs) for every experiment of the store that holds a run."""
    c = client(uri)
    rows = []
    for e in c.search_experiments():
        runs = _all_runs(c, [e.experiment_id])
        if runs:
            rows.append((e.name, sum(r.info.status == "FINISHED" for r in runs), len(runs)))
    return rows


def _name_list(rows: list[tuple[str, int, int]]) -> str:
    if not rows:
        return "none (run `negbench ablate SPEC` or `negbench run` first)"
    return ", ".join(f"{n} ({f} finished of {a})" for n, f, a in sorted(rows))


def latest_experiment(uri: str | None) -> str:
    """The experiment holding the most recently started run."""
    from negbench.harness.store import shown_uri

    c = client(uri)
    exps = {e.experiment_id: e.name for e in c.search_experiments()}
    if exps:
        latest = _all_runs(c, list(exps), order_by=["attributes.start_time DESC"],
                           max_results=1)
        if latest:
            return exps[latest[0].info.experiment_id]
    raise ConfigError(f"no runs in the tracking store {shown_uri(uri)}: run "
                      "`negbench ablate SPEC` or `negbench run` first, or pass --tracking-uri")


def parse_items(record) -> dict[str, str | None]:
    """The frame's item columns from an ``items.json`` record (None where a probe is missing or
    its string is not '0'/'1' characters of the declared length)."""
    out: dict[str, str | None] = {c: None for c in ITEM_COLUMNS.values()}
    out["items_split"] = None
    if not isinstance(record, dict):
        return out
    n = record.get("items")
    for col in ITEM_COLUMNS.values():
        bits = record.get(col)
        if (isinstance(bits, str) and bits and not set(bits) - {"0", "1"}
                and (n is None or len(bits) == n)):
            out[col] = bits
    if any(out[c] for c in ITEM_COLUMNS.values()):
        out["items_split"] = str(record.get("split", ""))
    return out


def _local_dir(artifact_uri: str) -> Path | None:
    """The directory of a local (file) artifact store, else None."""
    u = urlparse(artifact_uri or "")
    if u.scheme == "file":
        return Path(url2pathname(u.path))
    if u.scheme == "" and artifact_uri:
        return Path(artifact_uri)
    return None


def read_items(c, runs: dict[str, str], workers: int = 8) -> dict[str, dict]:
    """run_id -> the item columns of its ``items.json`` (:func:`parse_items`), for ``runs``
    {run_id: artifact URI}; a run without the artifact, or whose artifact cannot be read,
    gets all None. A local store is read in place; another is downloaded from, quietly."""

    def one(run_id: str, uri: str) -> dict:
        try:
            local = _local_dir(uri)
            if local is not None:
                path = local / ITEMS_FILE
                if not path.is_file():
                    return parse_items(None)
                return parse_items(json.loads(path.read_text(encoding="utf-8")))
            if not any(f.path == ITEMS_FILE for f in c.list_artifacts(run_id)):
                return parse_items(None)
            with tempfile.TemporaryDirectory() as d:
                got = c.download_artifacts(run_id, ITEMS_FILE, d)
                return parse_items(json.loads(Path(got).read_text(encoding="utf-8")))
        except Exception:  # an unreadable artifact reports as not recorded
            return parse_items(None)

    ids = list(runs)
    if not ids:
        return {}
    bar = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"  # mlflow's download progress bars, one per run
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ids)))) as pool:
            return dict(zip(ids, pool.map(one, ids, [runs[i] for i in ids]), strict=True))
    finally:
        if bar is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = bar


@dataclass
class Runs:
    """An experiment's runs: ``frame`` has one row per run (``RUN_COLUMNS`` plus one column per
    final metric); ``ignored`` counts the runs left out and why."""

    experiment: str
    experiment_id: str
    uri: str
    frame: pd.DataFrame
    ignored: dict[str, int]

    @property
    def finished(self) -> pd.DataFrame:
        return self.frame[self.frame["status"] == "FINISHED"]


def plain_label(strategy: str, fn_filter: str = "") -> str:
    """A run's label before any tuned marker: the strategy, ``strategy x FILTER`` with a
    false-negative filter. A label that differs from it sets tuned runs apart from their
    default runs (:func:`variant_labels`)."""
    return f"{strategy} x {fn_filter}" if fn_filter else strategy


def plain_label_of(runs: pd.DataFrame) -> str:
    """:func:`plain_label` of the runs of one variant (strategy and filter of the first run; a
    frame without the filter column, or a NaN there, is no filter)."""
    f = runs["fn_filter"].iloc[0] if "fn_filter" in runs else ""
    return plain_label(str(runs["strategy"].iloc[0]), f if isinstance(f, str) else "")


def variant_labels(frame: pd.DataFrame) -> pd.Series:
    """A row label per run: the strategy for a default config; ``strategy x FILTER`` for a run
    with a false-negative filter (tag ``negbench.fn_filter``); ``... (tuned)`` for a run tagged
    ``negbench.tuned`` where the experiment also ran that strategy at its defaults (``...
    (tuned: EXPORT)`` where one strategy has several exports). A strategy whose every run is
    tuned with one export keeps its plain name: the section then compares tuned strategies
    (in-batch's tuned runs are the reference), and the "tuned against default" table names the
    export. Exports are counted within a section (suite and budget): the main job reads one file
    per suite, and its random runs on digits and on bbc-news are each tuned with one export."""
    blank = [""] * len(frame)
    sections = list(zip(frame["suite"] if "suite" in frame else blank,
                        frame["budget"] if "budget" in frame else blank, strict=True))
    exports: dict[tuple, set] = {}
    for sec, s, t in zip(sections, frame["strategy"], frame["tuned"], strict=True):
        exports.setdefault((*sec, s), set()).add(t or "")

    def label(sec: tuple, s: str, t: str, f: str) -> str:
        base, ex = plain_label(s, f), exports[(*sec, s)]
        if not t or ex == {t}:
            return base
        return f"{base} (tuned)" if len(ex - {""}) == 1 else f"{base} (tuned: {t})"

    filters = frame["fn_filter"] if "fn_filter" in frame else blank
    return pd.Series([label(sec, s, t, f or "") for sec, s, t, f in
                      zip(sections, frame["strategy"], frame["tuned"], filters, strict=True)],
                     index=frame.index, dtype=object)


def load(uri: str | None, experiment: str) -> Runs:
    """Every run of ``experiment`` that carries negbench's identity tags.

    Raises ConfigError naming the experiments that exist when ``experiment`` is unknown or has
    no finished run."""
    from negbench.harness.store import shown_uri

    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"no experiment {experiment!r} in {shown_uri(uri)}; "
                          f"experiments with runs: {_name_list(experiments(uri))}")
    runs = _all_runs(c, [exp.experiment_id])
    rows, ignored = [], {}
    for r in runs:
        tags = r.data.tags
        if any(k not in tags for k in IDENTITY):
            ignored["without negbench's suite/strategy/seed/budget tags"] = \
                ignored.get("without negbench's suite/strategy/seed/budget tags", 0) + 1
            continue
        try:
            seed = int(tags["seed"])
        except ValueError:
            ignored["with a seed tag that is not an integer"] = \
                ignored.get("with a seed tag that is not an integer", 0) + 1
            continue
        row = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name or "",
            "status": r.info.status,
            "start_time": r.info.start_time,
            "end_time": r.info.end_time,
            "suite": section_name(tags),
            "strategy": tags["strategy"],
            "seed": seed,
            "budget": tags["budget"],
            "tuned": tags.get(TUNED_TAG, ""),
            "tuned_val": tags.get(TUNED_VAL_TAG, ""),
            "fn_filter": tags.get(FILTER_TAG, ""),
            "failure": tags.get("failure", ""),
            "tags": dict(tags),
        }
        for k, v in r.data.metrics.items():
            if k not in row:
                row[k] = v
        rows.append(row)
    uris = {r.info.run_id: r.info.artifact_uri for r in runs}
    items = read_items(c, {r["run_id"]: uris[r["run_id"]] for r in rows
                           if r["status"] == "FINISHED"})
    for r in rows:
        r.update(items.get(r["run_id"]) or parse_items(None))
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=[c for c in RUN_COLUMNS if c != "variant"])
    frame["variant"] = variant_labels(frame) if len(frame) else pd.Series(dtype=object)
    if not (frame["status"] == "FINISHED").any():
        raise ConfigError(f"experiment {experiment!r} has no finished negbench run "
                          f"({len(runs)} run(s) in all); experiments with runs: "
                          f"{_name_list(experiments(uri))}")
    return Runs(experiment, exp.experiment_id, shown_uri(uri), frame, ignored)


def latest_per_seed(finished: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One run per (suite, budget, variant, seed): the most recently started; and how many
    older duplicates were left out."""
    f = finished.sort_values("start_time", ascending=False, kind="stable")
    kept = f.drop_duplicates(["suite", "budget", "variant", "seed"], keep="first")
    return kept.sort_values(["suite", "budget", "variant", "seed"], kind="stable"), \
        len(f) - len(kept)


def histories(uri: str | None, run_ids: Iterable[str], keys: Iterable[str] = CURVES,
              on_done: Callable[[], None] | None = None, workers: int = 8) -> pd.DataFrame:
    """The training curves of ``run_ids``: columns run_id, step (samples seen),
    ``budget_fraction`` and one column per key.

    A point is a log point of the run (a step its ``budget_fraction`` history has). A key that
    is also a final metric (fnr, hardness) has a second value at the last step, the whole run's,
    logged later; the curve keeps the interval value, the first logged at that step."""
    c = client(uri)
    keys = list(keys)

    def one(run_id: str) -> pd.DataFrame | None:
        xs = {m.step: m.value for m in sorted(c.get_metric_history(run_id, X_AXIS),
                                               key=lambda m: (m.step, m.timestamp))}
        if not xs:
            if on_done:
                on_done()
            return None
        cols: dict[str, dict[int, float]] = {}
        for k in keys:
            first: dict[int, float] = {}
            for m in sorted(c.get_metric_history(run_id, k), key=lambda m: (m.step, m.timestamp)):
                if m.step in xs and m.step not in first:
                    first[m.step] = m.value
            cols[k] = first
        steps = sorted(xs)
        df = pd.DataFrame({"run_id": run_id, "step": steps, X_AXIS: [xs[s] for s in steps],
                           **{k: [cols[k].get(s, math.nan) for s in steps] for k in keys}})
        if on_done:
            on_done()
        return df

    ids = list(run_ids)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ids) or 1))) as pool:
        parts = [p for p in pool.map(one, ids) if p is not None]
    if not parts:
        return pd.DataFrame(columns=["run_id", "step", X_AXIS, *keys])
    return pd.concat(parts, ignore_index=True)
