"""A built report written out: ``index.html`` (self-contained: inline CSS, figures embedded as
data: URIs, no script, no network), ``report.md`` (the same tables, figures linked beside it)
and ``report.json`` (every number, unformatted). Each file is written whole or not at all.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path

from negbench import atomic_path
from negbench.reports.build import Report, Section, Table

FAILURE_CHARS = 400  # a failure reason in a table; report.json has it whole

CSS = """
:root { --ink:#1d232b; --muted:#5b6572; --line:#dde1e6; --head:#f3f5f8; --accent:#2f6fb0;
        --soft:#edf4fb; --good:#1f7a3f; --warn:#a4461a; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.5;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 28px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 44px 0 10px; padding-top: 14px; border-top: 2px solid var(--line); }
h3 { font-size: 16px; margin: 26px 0 6px; }
p.meta, .note, figcaption, footer { color: var(--muted); font-size: 13px; }
.headline { background: var(--soft); border-left: 4px solid var(--accent); padding: 12px 16px;
            margin: 12px 0; border-radius: 0 6px 6px 0; }
.headline strong { color: var(--accent); }
p.fact { margin: 6px 0; font-size: 14px; }
nav ol { padding-left: 20px; } nav li { margin: 6px 0; }
nav a, h2 a { color: var(--accent); text-decoration: none; }
ul.notes { margin: 6px 0; padding-left: 20px; color: var(--warn); font-size: 14px; }
.wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 2px; font-size: 13.5px;
        font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--head); font-weight: 600; text-align: left; }
td:first-child { white-space: nowrap; }
th.r, td.r { text-align: right; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
tr.best td { font-weight: 600; }
td.bad { color: var(--warn); font-weight: 600; }
td.ok { color: var(--good); }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 18px;
        margin-top: 14px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
figure.wide { grid-column: 1 / -1; }
figure img { width: 100%; height: auto; display: block; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
code { background: var(--head); padding: 1px 4px; border-radius: 3px; font-size: 12.5px; }
footer { margin-top: 48px; border-top: 1px solid var(--line); padding-top: 12px; }
"""


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _clip(s: str, n: int = FAILURE_CHARS) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _cells(t: Table) -> list[list[str]]:
    if t.key not in ("failed", "did_not_train"):
        return t.rows
    return [[*r[:-1], _clip(r[-1])] for r in t.rows]


# --------------------------------------------------------------------------- markdown
def _md_cell(s: str) -> str:
    return " ".join(str(s).split()).replace("|", "\\|") or " "


def md_table(t: Table) -> str:
    sep = ["---:" if a == "r" else "---" for a in t.align]
    lines = ["| " + " | ".join(_md_cell(h) for h in t.headers) + " |",
             "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in _cells(t)]
    out = f"### {t.title}\n\n" + "\n".join(lines) + "\n"
    if t.note:
        out += f"\n*{t.note}*\n"
    return out


def markdown(rep: Report) -> str:
    d = rep.data
    runs = ", ".join(f"{n} {s.lower()}" for s, n in sorted(d["runs"].items()))
    out = [f"# negbench report: {rep.experiment}\n",
           f"Experiment `{rep.experiment}` at `{rep.uri}`; runs: {runs}. Generated "
           f"{rep.generated}.\n"]
    out += [f"- {n}" for n in rep.notes]
    if rep.notes:
        out.append("")
    out.append("## Summary\n")
    out += [f"- [{s.title}](#{s.slug}): {s.headline}" for s in rep.sections]
    for s in rep.sections:
        out.append(f'\n<a id="{s.slug}"></a>\n\n## {s.title}\n')
        out.append(s.headline + "\n")
        out += [f"{f}\n" for f in s.facts]
        out += [f"> {n}\n" for n in s.notes]
        out += [md_table(t) for t in s.tables]
        if s.figures:
            out.append("### Figures\n")
            out += [f"![{f.caption}]({f.file})\n\n*{f.caption}*\n" for f in s.figures]
    out.append("## Across the experiment\n")
    problems = d["audit"]["problems"]
    out.append(_audit_summary(rep) + "\n")
    out += [f"- {p}" for p in problems]
    out += [md_table(t) for t in rep.tables]
    out.append(HOW_TO_READ_MD)
    return "\n".join(out) + "\n"


def _audit_summary(rep: Report) -> str:
    runs = rep.data["audit"]["runs"]
    problems = rep.data["audit"]["problems"]
    if not problems:
        return (f"Budget audit: all {len(runs)} finished runs spent exactly their budget "
                "(FLOPs and seconds budgets: within their last step), the same within each "
                "section.")
    return f"Budget audit: {len(problems)} problem(s) among {len(runs)} finished runs:"


HOW_TO_READ = [
    "Accuracy: frozen-encoder kNN top-1 (k = 20, cosine, temperature-weighted votes) and a "
    "linear probe, on the held-out test split, in percent.",
    "Accuracy interval, where runs recorded which test items they got right: mean [low, high] "
    "over seeds and test items. One seed: the exact binomial (Clopper-Pearson) interval over "
    "the test items; several: a hierarchical bootstrap (seeds, then items) holding both "
    "sources of variance. A small test split is coarse: with 360 items one item is 0.28 "
    "points.",
    "Confidence interval over seeds alone (runs without per-item results, and the suite's own "
    "metrics): mean over seeds ± t(0.975, n − 1) · s / √n, where s is the sample standard "
    "deviation over the n seeds. One seed gives no interval.",
    "Against in-batch, on the same test items: with one seed the exact McNemar test, with "
    "several a paired bootstrap over seeds and items. Holm's procedure adjusts the p-values "
    "over all comparisons of a section; a difference counts (is beyond noise) when its "
    "Holm-adjusted p < 0.05. The headline names a winner only then; otherwise it gives the "
    "smallest difference the runs could have detected with 80% power.",
    "Paired t-test: the strategy and in-batch are matched by seed; t = mean(Δ) / (s_Δ / √n) "
    "with n − 1 degrees of freedom, two-sided p. p < 0.05 is called significant at the 5% level.",
    "Floors: the untrained encoder's figures on the same split and seeds (and kNN on the raw "
    "inputs where defined). A run that does not beat its floor learned nothing, whatever its "
    "rank.",
    "Health: alignment and uniformity (Wang & Isola 2020), RankMe (Garrido et al. 2023) and "
    "hardness give each run a verdict, ok, degraded or collapsed; a strategy with a collapsed "
    "seed is not ranked but listed under “Did not train”.",
    "Oracle references (fn-free, supcon) read the labels: bounds, never ranked. False-negative "
    "headroom = fn-free − in-batch in kNN accuracy: the most that handling false negatives "
    "could gain.",
    "FNR (false-negative rate): the share of selected (anchor, negative) pairs whose oracle "
    "labels are equal; weighted FNR uses the strategy's weights. Hardness: mean cosine "
    "similarity of an anchor to its negatives.",
    "Budget: every run of a section spent the same budget (samples seen, steps, FLOPs or "
    "seconds); the learning rate and every curriculum follow the fraction of it spent.",
]
HOW_TO_READ_MD = "## How to read this report\n\n" + "\n".join(f"- {x}" for x in HOW_TO_READ)


# --------------------------------------------------------------------------- html
def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _bold(s: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", _e(s))


def _class(t: Table, j: int, cell: str) -> str:
    cls = ["r"] if t.align[j] == "r" else []
    if t.key == "audit" and t.headers[j] == "verdict":
        cls.append("ok" if cell == "exact" or cell.startswith("over by") and "step" in cell
                   else "bad")
    return f' class="{" ".join(cls)}"' if cls else ""


def html_table(t: Table, bold: str | None = None) -> str:
    """``t`` as HTML; in a ranking, the row of strategy ``bold`` (the section's winner) is
    marked."""
    head = "".join(f'<th{" class=r" if a == "r" else ""}>{_e(h)}</th>'
                   for h, a in zip(t.headers, t.align, strict=True))
    body = []
    for row in _cells(t):
        tr = ' class="best"' if bold is not None and len(row) > 1 and row[1] == bold else ""
        tds = "".join(f"<td{_class(t, j, c)}>{_e(c)}</td>" for j, c in enumerate(row))
        body.append(f"<tr{tr}>{tds}</tr>")
    note = f'<p class="note">{_e(t.note)}</p>' if t.note else ""
    return (f'<h3>{_e(t.title)}</h3><div class="wrap"><table>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{note}")


def _img(out: Path, file: str) -> str:
    data = base64.b64encode((out / file).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def html_section(s: Section, out: Path) -> str:
    parts = [f'<section id="{_e(s.slug)}"><h2><a href="#{_e(s.slug)}">{_e(s.title)}</a></h2>',
             f'<p class="headline">{_bold(s.headline)}</p>']
    parts += [f'<p class="fact">{_e(f)}</p>' for f in s.facts]
    if s.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in s.notes)
                     + "</ul>")
    winner = s.data.get("verdict", {}).get("winner")
    parts += [html_table(t, bold=winner if t.key == "ranking" else None) for t in s.tables]
    if s.figures:
        figs = []
        for f in s.figures:
            wide = ' class="wide"' if f.kind in ("pareto", "curves") else ""
            figs.append(f'<figure{wide}><img src="{_img(out, f.file)}" alt="{_e(f.caption)}">'
                        f"<figcaption>{_e(f.caption)} <code>{_e(f.file)}</code></figcaption>"
                        "</figure>")
        parts.append('<h3>Figures</h3><div class="figs">' + "".join(figs) + "</div>")
    parts.append("</section>")
    return "".join(parts)


def page(rep: Report, out: Path) -> str:
    d = rep.data
    runs = ", ".join(f"{n} {s.lower()}" for s, n in sorted(d["runs"].items()))
    nav = "".join(f'<li><a href="#{_e(s.slug)}">{_e(s.title)}</a>: {_bold(s.headline)}</li>'
                  for s in rep.sections)
    notes = ("<ul class=\"notes\">" + "".join(f"<li>{_e(n)}</li>" for n in rep.notes) + "</ul>"
             if rep.notes else "")
    problems = d["audit"]["problems"]
    across = [f"<p>{_e(_audit_summary(rep))}</p>"]
    if problems:
        across.append('<ul class="notes">' + "".join(f"<li>{_e(p)}</li>" for p in problems)
                      + "</ul>")
    for t in rep.tables:
        if t.key == "audit":
            across.append(f"<details{' open' if problems else ''}><summary>every run's budget "
                          f"({len(t.rows)} runs)</summary>{html_table(t)}</details>")
        else:
            across.append(html_table(t))
    how = "".join(f"<li>{_e(x)}</li>" for x in HOW_TO_READ)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>negbench report: {_e(rep.experiment)}</title>
<link rel="icon" href="data:,">
<style>{CSS}</style></head>
<body><main>
<header><h1>negbench report: {_e(rep.experiment)}</h1>
<p class="meta">experiment <code>{_e(rep.experiment)}</code> at <code>{_e(rep.uri)}</code> ·
runs: {_e(runs)} · generated {_e(rep.generated)}</p></header>
{notes}
<nav><h2 style="margin-top:20px">Summary</h2><ol>{nav}</ol></nav>
{''.join(html_section(s, out) for s in rep.sections)}
<section id="across"><h2><a href="#across">Across the experiment</a></h2>{''.join(across)}
</section>
<footer><strong>How to read this report</strong><ul>{how}</ul>
Files beside this page: <code>report.md</code>, <code>report.json</code> and the figures as
PNG.</footer>
</main></body></html>
"""


# --------------------------------------------------------------------------- json
def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):  # numpy scalars
        return _clean(x.item())
    return x


def write(rep: Report, out: Path) -> Path:
    """Write report.json, report.md and index.html into ``out`` (the figures are there
    already); the path of index.html."""
    data = dict(rep.data)
    data["sections"] = [sd | {"figures": [f.file for f in s.figures]}
                        for sd, s in zip(rep.data["sections"], rep.sections, strict=True)]
    _write(out / "report.json", json.dumps(_clean(data), indent=1, sort_keys=False,
                                           allow_nan=False) + "\n")
    _write(out / "report.md", markdown(rep))
    index = out / "index.html"
    _write(index, page(rep, out))
    return index
