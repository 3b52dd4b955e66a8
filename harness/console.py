"""What every ``negbench`` command shares on the command line: the argument parser whose errors are
one line, the rich console and progress bar, the exit statuses, and the one place that runs a
command's handler and turns an error into one line on stderr.

Nothing here imports torch, mlflow, optuna or pandas (rich only inside the functions that draw),
so ``negbench --help`` stays fast: every command's parser is built from modules like this one.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from negbench import NegbenchError
from negbench.harness.redact import redact

EXIT_USAGE = 2  # bad input: NegbenchError.exit_code
EXIT_FAILED = 1  # a run failed, or a cell of an ablation is not completed
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM (kill, a scheduler's stop): 128 + 15
COMMAND_ENV = "NEGBENCH_COMMAND"  # the command every run records (tag negbench.command)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: everything that cleans up after Ctrl-C (a run ended
    KILLED in mlflow, an ablation's workers stopped, its queue's claims released) does so after
    ``kill`` too, instead of the process vanishing with its runs left RUNNING."""


def _raise_terminated(signum, frame):
    raise Terminated()


class UserError(NegbenchError):
    """Bad input that a command finds itself (``--workers 0``): one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


PLUGIN_EPILOG = ("--plugin MODULE_OR_FILE (repeatable, anywhere on the line) imports your "
                 "strategies or suites first; see `negbench --help`.")


class _Subcommands(argparse._SubParsersAction):
    """Subcommand parsers whose help ends with :data:`PLUGIN_EPILOG` (``--plugin`` is an option
    of ``negbench`` itself, hoisted from wherever it is typed, so it is not in their options)."""

    def add_parser(self, name, **kwargs):
        kwargs["epilog"] = " ".join(filter(None, [kwargs.get("epilog"), PLUGIN_EPILOG]))
        return super().add_parser(name, **kwargs)


def subcommands(parser: argparse.ArgumentParser):
    """``parser``'s subcommands, each a :class:`Parser`; a subcommand sets ``handler``."""
    return parser.add_subparsers(dest="command", required=True, parser_class=Parser,
                                 metavar="COMMAND", action=_Subcommands)


def tracking_uri(text: str) -> str:
    """argparse type of ``--tracking-uri``: a URI whose scheme mlflow can store runs in."""
    from negbench.harness.store import StoreError, check_tracking_uri

    try:
        return check_tracking_uri(text)
    except StoreError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_tracking_uri(p: argparse.ArgumentParser, example: str = "") -> None:
    """``--tracking-uri``, alike in every command that reads or writes runs."""
    eg = f", e.g. {example}" if example else ""
    p.add_argument("--tracking-uri", default=None, type=tracking_uri,
                   help=f"mlflow tracking URI{eg} (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///negbench-runs/mlflow.db)")


def console(stderr: bool = True):
    """A rich console; piped output gets 140 columns rather than rich's 80, so tables fit."""
    from rich.console import Console

    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=140)


def progress(con, disable: bool):
    """A rich progress display on ``con``: description, bar, percent, a ``stats`` field,
    elapsed time."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(), console=con, disable=disable, transient=False,
    )


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def run_command(args: argparse.Namespace, words: Sequence[str]) -> int:
    """Run ``args.handler(args)`` (the subcommand's) and return its exit status: the one place
    where a command's errors end. A :class:`~negbench.NegbenchError` becomes one line on stderr
    and its ``exit_code`` (2, bad input; 1, a run that failed); Ctrl-C becomes one line and 130
    (``args.on_interrupt``, if the subcommand sets it, is appended to that line), SIGTERM the
    same with "terminated" and 143 (:class:`Terminated`, raised where Ctrl-C would be).

    ``words``: the command line as the user typed it (``negbench ...``), recorded in
    ``NEGBENCH_COMMAND`` for the runs this command makes, unless a parent process set it, with
    every URL's password replaced by ``***`` (:func:`~negbench.harness.redact.redact`), as in
    the error line."""
    name = f"negbench {args.command}"
    inherited = os.environ.get(COMMAND_ENV)
    os.environ[COMMAND_ENV] = inherited or redact(shlex.join(list(words)))
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        if getattr(args, "plugins", None):  # --plugin: before the command looks anything up
            from negbench.strategies.registry import load_plugin

            for ref in args.plugins:
                load_plugin(ref)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except NegbenchError as e:
        what = "run failed" if e.exit_code == EXIT_FAILED else "error"
        sys.stderr.write(f"{name}: {what}: {redact(one_line(e))}\n")
        return e.exit_code
    except KeyboardInterrupt as e:
        how, code = (("terminated", EXIT_TERMINATED) if isinstance(e, Terminated)
                     else ("interrupted", EXIT_INTERRUPTED))
        sys.stderr.write(f"{name}: {how}{getattr(args, 'on_interrupt', '')}\n")
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if inherited is None:
            os.environ.pop(COMMAND_ENV, None)


def main_of(add_parser: Callable, command: str, argv: Sequence[str] | None) -> int:
    """A subcommand run on its own (``python -m negbench.harness.tune ...``): ``argv`` holds its
    options without the command's name; errors as in ``negbench``."""
    parser = Parser(prog="negbench")
    add_parser(subcommands(parser))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args([command, *argv])
    return run_command(args, ["negbench", command, *argv])


def strategy_table(title: str, per: dict[str, list[dict]], cols: list[tuple[str, str]],
                   spread: tuple[str, ...] | None = None):
    """A rich table: one row per strategy (best mean kNN accuracy first), each column a
    metric's mean over the strategy's runs, with ± the sample standard deviation when there are
    several runs (for the ``spread`` metrics only, when given); "-" where no run has it."""
    import statistics

    from rich.table import Table

    t = Table(title=title)
    t.add_column("strategy")
    for _, heading in cols:
        t.add_column(heading, justify="right")
    # best kNN accuracy first; by retrieval MRR where no run has one (a suite without labels)
    rank = ("knn_acc" if any("knn_acc" in m for ms in per.values() for m in ms)
            else "retrieval_mrr")
    order = sorted(per, key=lambda n: -statistics.mean(m.get(rank, 0) for m in per[n]))
    for n in order:
        row = []
        for key, _ in cols:
            vals = [m[key] for m in per[n] if key in m]
            if not vals:
                row.append("-")
                continue
            sd = (f" ± {statistics.stdev(vals):.3f}"
                  if len(vals) > 1 and (spread is None or key in spread) else "")
            row.append(format_value(statistics.mean(vals)) + sd)
        t.add_row(n, *row)
    return t


def format_value(v) -> str:
    """A metric for a table: integers with separators, large numbers in e-notation."""
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "n/a"
    if abs(v) >= 1e6:
        return f"{v:.3g}"
    if float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"


__all__ = ["COMMAND_ENV", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_USAGE", "Parser", "UserError",
           "add_tracking_uri", "console", "format_value", "main_of", "one_line", "progress",
           "run_command", "strategy_table", "subcommands", "tracking_uri"]
