"""What every ``negbench`` command shares on the command line: the argument parser whose errors are
one line, the rich console and progress bar, the exit statuses, and the one place that runs a
command's handler and turns an error into one line on stderr.

Nothing here imports torch, mlflow, optuna or pandas (rich only inside the functions that draw),
so ``negbench --help`` stays fast: every command's parser is built from modules like this one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Sequence

from negbench import NegbenchError
from negbench.harness.redact import redact

EXIT_USAGE = 2  # bad input: NegbenchError.exit_code
EXIT_FAILED = 1  # a run failed, or a cell of an ablation is not completed
EXIT_INTERRUPTED = 130  # Ctrl-C
COMMAND_ENV = "NEGBENCH_COMMAND"  # the command every run records (tag negbench.command)


class UserError(NegbenchError):
    """Bad input that a command finds itself (``--workers 0``): one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def subcommands(parser: argparse.ArgumentParser):
    """``parser``'s subcommands, each a :class:`Parser`; a subcommand sets ``handler``."""
    return parser.add_subparsers(dest="command", required=True, parser_class=Parser,
                                 metavar="COMMAND")


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
    (``args.on_interrupt``, if the subcommand sets it, is appended to that line).

    ``words``: the command line as the user typed it (``negbench ...``), recorded in
    ``NEGBENCH_COMMAND`` for the runs this command makes, unless a parent process set it, with
    every URL's password replaced by ``***`` (:func:`~negbench.harness.redact.redact`), as in
    the error line."""
    name = f"negbench {args.command}"
    inherited = os.environ.get(COMMAND_ENV)
    os.environ[COMMAND_ENV] = inherited or redact(shlex.join(list(words)))
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
    except KeyboardInterrupt:
        sys.stderr.write(f"{name}: interrupted{getattr(args, 'on_interrupt', '')}\n")
        return EXIT_INTERRUPTED
    finally:
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


__all__ = ["COMMAND_ENV", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_USAGE", "Parser", "UserError",
           "add_tracking_uri", "console", "main_of", "one_line", "progress", "run_command",
           "subcommands", "tracking_uri"]
