"""``negbench report``: the comparison report of an experiment's tracked runs.

``harness.cli`` wires :func:`add_parser` into ``negbench``; :func:`main` runs the command on its
own (``python -m negbench.reports.cli --experiment demo``) with the same error handling. The parser
imports nothing heavy (pandas, mlflow and matplotlib are imported when the report is written).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from negbench.harness.console import add_tracking_uri, console, main_of, progress

DESCRIPTION = (
    "Write the comparison report of an experiment's tracked runs: per suite and budget, the "
    "strategies ranked by kNN and linear accuracy with 95% intervals over test items and seeds, "
    "each compared with in-batch on the same test items (exact McNemar with one seed, a paired "
    "bootstrap over seeds and items with several; Holm-corrected over a section), the "
    "representation health of each "
    "run and the untrained encoder's floors, runs that did not train set apart, oracle "
    "references and the false-negative headroom, FNR, hardness and cost side by side, the "
    "Pareto front of accuracy against compute, training curves, FNR by hardness decile, tuned "
    "against default configs, a budget audit of every run, failed runs and provenance. Writes "
    "index.html (self-contained, no network), report.md, report.json and the figures as PNG "
    "files, and prints the path of index.html.")


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``report`` to argparse subparsers ``sub`` (whose parser_class the caller set)."""
    p = sub.add_parser("report", help="write the comparison report (HTML, Markdown, figures) "
                                      "of an experiment", description=DESCRIPTION)
    p.add_argument("--experiment", default=None, metavar="NAME",
                   help="the mlflow experiment to report on (e.g. the spec's name: demo); "
                        "default: the experiment holding the most recently started run")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where to write the report (default: "
                        "negbench-runs/reports/EXPERIMENT/)")
    add_tracking_uri(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_report)
    return p


def default_out(experiment: str) -> Path:
    from negbench.harness.store import DEFAULT_DIR
    from negbench.reports.build import slug

    return DEFAULT_DIR / "reports" / slug(experiment)


def prepare_out(out: str | Path | None, experiment: str) -> Path:
    """The report's directory, made and checked writable (ConfigError otherwise)."""
    from negbench.harness.config import ConfigError

    path = Path(out) if out is not None else default_out(experiment)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".negbench-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out {str(path)!r}: cannot write the report there "
                          f"({e.strerror or e}); pass a writable directory") from None
    return path


def load(uri: str | None, experiment: str | None):
    """The runs of ``experiment``, default: the one holding the most recently started run."""
    from negbench.reports import data

    return data.load(uri, experiment or data.latest_experiment(uri))


def write_report(runs, uri: str | None, out: Path, progress=None) -> Path:
    """Build the report of ``runs`` (:func:`load`) and write it into ``out``; the path of its
    index.html. ``progress``: a rich Progress, or None."""
    from negbench.reports import data, figures, render
    from negbench.reports.build import build

    def task(desc: str, total: float) -> Callable[..., None]:
        if progress is None:
            return lambda n=1: None
        t = progress.add_task(desc, total=total, stats="")
        return lambda n=1: progress.advance(t, n)

    rep = build(runs)
    ids = [i for s in rep.sections for i in s.runs["run_id"]]
    step = task(f"training curves of {len(ids)} runs", len(ids))
    hist = data.histories(uri, ids, on_done=step)
    pal = figures.Palette(list(runs.frame["strategy"]))
    step = task(f"figures of {len(rep.sections)} section(s)", len(rep.sections))
    for s in rep.sections:
        s.figures = figures.draw(s, hist[hist["run_id"].isin(set(s.runs["run_id"]))], pal, out)
        step()
    step = task("index.html, report.md, report.json", 1)
    index = render.write(rep, out)
    step()
    return index


def generate(uri: str | None, experiment: str | None = None, out: str | Path | None = None,
             progress=None) -> Path:
    """:func:`load`, :func:`prepare_out` and :func:`write_report` in one call."""
    runs = load(uri, experiment)
    return write_report(runs, uri, prepare_out(out, runs.experiment), progress)


def cmd_report(args) -> int:
    from contextlib import nullcontext

    con = console()
    # bad input (an unknown experiment, an unwritable --out) fails before any progress bar
    with (nullcontext() if args.no_progress else con.status("reading runs from mlflow")):
        runs = load(args.tracking_uri, args.experiment)
        out = prepare_out(args.out, runs.experiment)
    with progress(con, args.no_progress) as prog:
        index = write_report(runs, args.tracking_uri, out, prog)
    print(index.resolve())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``negbench report`` on its own: ``argv`` holds the options, without ``report``."""
    return main_of(add_parser, "report", argv)


if __name__ == "__main__":
    raise SystemExit(main())
