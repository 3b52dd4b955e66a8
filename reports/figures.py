"""The figures of a section, drawn with matplotlib's Agg canvas (no display, no pyplot state)
and saved as PNG files beside the report.

One colour per strategy throughout a report; a tuned variant shown beside its strategy's default
runs keeps the strategy's colour with a dashed line and hollow markers.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from negbench import atomic_path
from negbench.reports.build import ACCURACY, DECILES, PARETO_COSTS, Figure, Section
from negbench.reports.data import CURVES, X_AXIS

DPI = 110
CURVE_TITLES = {"loss": "training loss", "fnr": "FNR (%)", "hardness": "hardness (mean cos)",
                "lr": "learning rate"}
CURVE_SCALE = {"fnr": 100.0}


def _new(w: float, h: float, rows: int = 1, cols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.grid(True, color="#e5e5e5", linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig, axes


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


class Palette:
    """Strategy -> colour, fixed for a whole report."""

    def __init__(self, strategies: list[str]):
        from matplotlib import colormaps

        names = sorted(set(strategies))
        cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
        self.colors = {n: cmap(i % cmap.N) for i, n in enumerate(names)}

    def style(self, section: Section, variant: str) -> dict:
        info = section.data["strategies"][variant]
        # dashed where the label sets a tuned variant apart from its default runs; a section
        # whose runs of a strategy are all tuned (the main job) draws it plain, like its label
        tuned = bool(info.get("tuned_apart"))
        c = self.colors.get(info["strategy"], "#444444")
        return {"color": c, "linestyle": "--" if tuned else "-",
                "markerfacecolor": "white" if tuned else c, "markeredgecolor": c}


def _acc(section: Section, v: str) -> tuple[float, list[list[float]] | None]:
    """Mean kNN accuracy (%) and its error bar as the ranking shows it: the per-item interval
    where the runs recorded one (asymmetric), else the Student-t interval over seeds; None
    when there is none."""
    info = section.data["strategies"][v]
    items = info.get("knn_acc_items")
    if items:
        low, high = items["shown"]
        y = 100 * items["mean"]
        return y, [[y - 100 * low], [100 * high - y]]
    iv = info["knn_acc"]
    half = iv["half"]
    return 100 * iv["mean"], (None if half is None else [[100 * half], [100 * half]])


def _cap_percent(ax) -> None:
    """An accuracy axis ends at 100%: a wide interval of few seeds is cut there."""
    lo, hi = ax.get_ylim()
    if hi > 100:
        ax.set_ylim(lo, 100.2)


def pareto(section: Section, pal: Palette, out: Path) -> Figure | None:
    costs = [(k, name) for k, name in PARETO_COSTS if k in section.data["pareto"]]
    if not costs:
        return None
    fig, axes = _new(5.2 * len(costs), 4.0, 1, len(costs))
    for ax, (key, name) in zip(axes[0], costs, strict=True):
        front = section.data["pareto"][key]
        pts = []
        for i, v in enumerate(section.order):
            x = section.data["strategies"][v]["means"].get(key, math.nan)
            y, err = _acc(section, v)
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            st = pal.style(section, v)
            on = v in front
            ax.errorbar([x], [y], yerr=err, fmt="o",
                        color=st["color"], markerfacecolor=st["markerfacecolor"],
                        markeredgecolor="black" if on else st["markeredgecolor"],
                        markersize=9 if on else 6, capsize=3, elinewidth=1, zorder=3)
            ax.annotate(v, (x, y), textcoords="offset points", fontsize=8,
                        xytext=(6, 5) if i % 2 == 0 else (6, -11))
            pts.append((x, y, on))
        fr = sorted((x, y) for x, y, on in pts if on)
        if fr:
            ax.step([p[0] for p in fr], [p[1] for p in fr], where="post", color="black",
                    linewidth=1.2, linestyle=":", zorder=2, label="Pareto front")
            ax.legend(loc="lower right", fontsize=8, frameon=False)
        xs = [p[0] for p in pts]
        if key == "flops" and xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")  # only across a decade or more: no crowded minor labels
        _cap_percent(ax)
        ax.margins(x=0.15)
        ax.set_xlabel("training FLOPs" if key == "flops" else "training wall-clock (s)")
        ax.set_ylabel(ACCURACY[0].header)
        ax.set_title(f"kNN accuracy against {name}", fontsize=10)
    name = f"{section.slug}-pareto.png"
    _save(fig, out / name)
    return Figure("pareto", name, "kNN accuracy of the ranked strategies (mean, bars: 95% "
                                  "interval as in the ranking) against training compute; ringed "
                                  "points and the dotted line are the Pareto front.")


def acc_fnr(section: Section, pal: Palette, out: Path) -> Figure | None:
    df = section.runs
    if "fnr" not in df.columns or "knn_acc" not in df.columns:
        return None
    fig, axes = _new(6.0, 4.2)
    ax = axes[0][0]
    for v in section.order:
        g = df[df["variant"] == v]
        st = pal.style(section, v)
        ax.scatter(100 * g["fnr"], 100 * g["knn_acc"], s=14, color=st["color"], alpha=0.45,
                   linewidths=0)
        x, y = 100 * g["fnr"].mean(), 100 * g["knn_acc"].mean()
        if math.isfinite(x) and math.isfinite(y):
            ax.plot([x], [y], "o", markersize=8, color=st["color"],
                    markerfacecolor=st["markerfacecolor"], markeredgecolor="black", zorder=3)
            ax.annotate(v, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    ax.margins(0.15)
    ax.set_xlabel("false-negative rate (%)")
    ax.set_ylabel(ACCURACY[0].header)
    ax.set_title("kNN accuracy against FNR (small dots: runs; large: means)", fontsize=10)
    name = f"{section.slug}-acc-fnr.png"
    _save(fig, out / name)
    return Figure("acc_fnr", name, "kNN accuracy against the false-negative rate, per run and "
                                   "per strategy mean.")


def curves(section: Section, hist: pd.DataFrame, pal: Palette, out: Path) -> Figure | None:
    if hist.empty:
        return None
    ranked = {i for v in section.order for i in section.data["strategies"][v]["run_ids"]}
    mine = hist[hist["run_id"].isin(ranked)]
    # a panel for each curve some run recorded: no FNR panel for a section without labels
    keys = [k for k in CURVES if k in mine.columns and mine[k].notna().any()]
    if not keys:
        return None
    rows = (len(keys) + 1) // 2
    fig, axes = _new(9.0, 3.0 * rows, rows, 2)
    for ax in list(axes.flat)[len(keys):]:
        ax.remove()
    handles = {}
    for ax, key in zip(axes.flat, keys, strict=False):
        n = len(section.order)
        for i, v in enumerate(section.order):
            ids = section.data["strategies"][v]["run_ids"]
            h = mine[mine["run_id"].isin(ids)]
            if h.empty or h[key].isna().all():
                continue
            mean = h.groupby("step")[[X_AXIS, key]].mean().sort_values(X_AXIS)
            st = pal.style(section, v)
            (line,) = ax.plot(mean[X_AXIS], CURVE_SCALE.get(key, 1.0) * mean[key],
                              color=st["color"], linestyle=st["linestyle"], label=v,
                              # the better ranked drawn wider and below: equal curves still show
                              linewidth=1.2 + 2.0 * (n - 1 - i) / max(n - 1, 1), zorder=2 + i)
            handles.setdefault(v, line)
        ax.set_title(CURVE_TITLES[key], fontsize=10)
        ax.set_xlabel("fraction of the budget spent")
        ax.set_xlim(0, 1)
    if not handles:
        return None
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=8,
               frameon=False)
    name = f"{section.slug}-curves.png"
    _save(fig, out / name)
    interval = " and ".join(CURVE_TITLES[k].split(" (")[0] for k in ("fnr", "hardness")
                            if k in keys)
    return Figure("curves", name, "training curves against the fraction of the budget spent, "
                                  "mean over seeds at each log point"
                                  + (f" ({interval}: over the interval since the previous "
                                     "point)." if interval else "."))


def deciles(section: Section, pal: Palette, out: Path) -> Figure | None:
    if not any("deciles" in section.data["strategies"][v] for v in section.order):
        return None
    fig, axes = _new(6.4, 4.2)
    ax = axes[0][0]
    for v in section.order:
        d = section.data["strategies"][v].get("deciles")
        if not d:
            continue
        pts = [(e, 100 * f) for e, f in zip(d["edges"], d["fnr"], strict=True)
               if math.isfinite(e) and math.isfinite(f)]
        if not pts:
            continue
        st = pal.style(section, v)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=4,
                color=st["color"], linestyle=st["linestyle"],
                markerfacecolor=st["markerfacecolor"], linewidth=1.3, label=v)
    ax.set_xlabel(f"hardness decile (its upper edge, cosine similarity; {DECILES} per strategy)")
    ax.set_ylabel("FNR within the decile (%)")
    ax.set_title("False negatives by hardness", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    name = f"{section.slug}-deciles.png"
    _save(fig, out / name)
    return Figure("deciles", name, "FNR within each hardness decile (mean over seeds), placed "
                                   "at the decile's upper similarity edge.")


def draw(section: Section, hist: pd.DataFrame, pal: Palette, out: Path) -> list[Figure]:
    made = [pareto(section, pal, out), curves(section, hist, pal, out),
            acc_fnr(section, pal, out), deciles(section, pal, out)]
    return [f for f in made if f is not None]
