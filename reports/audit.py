"""The tables across an experiment, under its sections: the budget audit (every finished run's
spent budget against its total), the failed runs, and the provenance the runs recorded.
"""

from __future__ import annotations

import math
import time

import pandas as pd

from negbench.harness.redact import redact
from negbench.harness.tags import COMMAND_TAG
from negbench.reports.format import Table, fmt


def _verdict(kind: str, spent: float, total: float) -> tuple[str, bool]:
    if not (math.isfinite(spent) and math.isfinite(total)):
        return "not recorded", False
    if spent == total:
        return "exact", True
    if spent > total and kind in ("flops", "seconds"):
        return f"over by {100 * (spent - total) / total:.2f}% (its last step)", True
    word = "over" if spent > total else "short"
    return f"{word} by {fmt(abs(spent - total), 'g3')}", False


def audit_table(finished: pd.DataFrame) -> tuple[Table, list[dict], list[str]]:
    rows, data, problems = [], [], []
    f = finished.sort_values(["suite", "budget", "variant", "seed", "start_time"], kind="stable")
    for r in f.itertuples(index=False):
        spent = float(getattr(r, "budget_spent", math.nan))
        total = float(getattr(r, "budget_total", math.nan))
        kind = str(r.budget).split("=")[0]
        verdict, ok = _verdict(kind, spent, total)
        rows.append([r.suite, r.variant, str(r.seed), r.budget, fmt(spent, "int"),
                     fmt(total, "int"), verdict])
        data.append({"run_id": r.run_id, "suite": r.suite, "strategy": r.variant,
                     "seed": int(r.seed), "budget": r.budget, "spent": spent, "total": total,
                     "verdict": verdict, "ok": ok})
        if not ok:
            problems.append(f"{r.suite}/{r.variant}/seed {r.seed}: {verdict}")
    for suite, g in f.groupby("suite"):
        budgets = sorted(set(g["budget"]))
        if len(budgets) > 1:
            problems.append(f"{suite}: runs under different budgets ({', '.join(budgets)}); "
                            "each budget has its own section")
    t = Table("audit", "Budget audit", ["suite", "strategy", "seed", "budget", "spent",
                                        "total", "verdict"], rows,
              note="every finished run's spent budget against its total, in the budget's own "
                   "unit (samples, steps, FLOPs or seconds).",
              align=["l", "l", "r", "l", "r", "r", "l"])
    return t, data, problems


def failed_table(frame: pd.DataFrame) -> tuple[Table | None, list[dict]]:
    bad = frame[frame["status"].isin(["FAILED", "KILLED"])].sort_values(
        ["suite", "variant", "seed", "start_time"], kind="stable")
    if bad.empty:
        return None, []
    rows, data = [], []
    for r in bad.itertuples(index=False):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.start_time / 1000))
        rows.append([r.suite, r.variant, str(r.seed), r.budget, r.status, when,
                     r.failure or "no failure tag"])
        data.append({"run_id": r.run_id, "suite": r.suite, "strategy": r.variant,
                     "seed": int(r.seed), "budget": r.budget, "status": r.status,
                     "failure": r.failure})
    return Table("failed", "Failed runs", ["suite", "strategy", "seed", "budget", "status",
                                           "started", "failure"], rows,
                 note="not counted in any table above; `negbench ablate` tries a failed cell "
                      "again when the spec runs again.", align=["l"] * 7), data


def provenance_table(finished: pd.DataFrame) -> tuple[Table, dict]:
    n = len(finished)
    tags = list(finished["tags"])
    items = [("git commit", "git_commit"), ("command", COMMAND_TAG), ("device", "device"),
             ("host", "host"), ("python", "python")]
    versions = sorted({k for t in tags for k in t if k.startswith("version.")})
    items += [(f"{k[len('version.'):]} version", k) for k in versions]
    rows, data = [], {}
    for label, key in items:
        counts: dict[str, int] = {}
        for t in tags:  # a run recorded before commands were redacted shows no password either
            v = redact(t.get(key, ""))
            counts[v] = counts.get(v, 0) + 1
        shown = []
        for v, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            name = v if v else "not recorded"
            shown.append(name if len(counts) == 1 else f"{name} ({c} runs)")
        rows.append([label, "; ".join(shown)])
        data[key] = {(v or "not recorded"): c for v, c in counts.items()}
    return Table("provenance", "Provenance", ["what", f"value (over the {n} finished runs)"],
                 rows, note="from the tags every run records; a value that differs between "
                            "runs is listed with its count of runs.",
                 align=["l", "l"]), data
