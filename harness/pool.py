"""Local worker processes: ``ablate --workers N`` and ``tune --workers N`` start N children of
``negbench``, each with its share of the host, and read their JSON event lines.

- :func:`worker_env`: child ``i`` of ``n`` gets ``cores // n`` threads (``NEGBENCH_THREADS``,
  ``OMP_NUM_THREADS``), or its own GPU (``CUDA_VISIBLE_DEVICES``) where there are ``n``;
  :func:`apply_thread_share` is what the child does with it.
- :func:`run_children`: start the children, pass each line they print on stdout that is a JSON
  object to ``on_event(i, event)`` (one at a time), and return their exit codes; Ctrl-C stops them.
- :func:`process_token` / :func:`token_alive`: a process's identity on this machine (boot, PID
  namespace, pid and start time), so a queue can tell at once that a process holding a cell has
  died here (``kill -9``) instead of waiting for its heartbeat to lapse.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

THREADS_ENV = "NEGBENCH_THREADS"


def worker_env(i: int, n: int) -> dict[str, str]:
    """Environment of local worker ``i`` of ``n``: its share of the CPU threads, or one GPU."""
    env = dict(os.environ)
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA runtime: CPU shares
        gpus = 0
    if gpus >= n:
        env["CUDA_VISIBLE_DEVICES"] = str(i)
    threads = max(1, (os.cpu_count() or 1) // n)
    env[THREADS_ENV] = str(threads)
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def apply_thread_share() -> None:
    """This process's share of the CPU threads, where whoever started several workers on one
    host set it (``NEGBENCH_THREADS``)."""
    if os.environ.get(THREADS_ENV):
        import torch

        torch.set_num_threads(int(os.environ[THREADS_ENV]))


def run_children(commands: Sequence[list[str]], on_event: Callable[[int, dict], None],
                 envs: Sequence[dict[str, str]] | None = None,
                 extra_env: dict[str, str] | None = None) -> list[int]:
    """Run ``commands`` as child processes (``envs``: default :func:`worker_env` of each, plus
    ``extra_env``: the URLs, which never go on a command line), pass their JSON event lines to
    ``on_event(i, event)``, return their exit codes. Their stderr is left on ours."""
    n = len(commands)
    envs = envs if envs is not None else [worker_env(i, n) for i in range(n)]
    envs = [{**e, **(extra_env or {})} for e in envs]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
             for cmd, env in zip(commands, envs, strict=True)]
    lock = threading.Lock()

    def pump(i: int, p: subprocess.Popen) -> None:
        for line in p.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(ev, dict):
                with lock:
                    on_event(i, ev)

    threads = [threading.Thread(target=pump, args=(i, p), daemon=True)
               for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        raise
    for t in threads:
        t.join(timeout=5)
    return codes


# --------------------------------------------------------------------------- process identity
def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), None for a process
    that does not exist or is a zombie (dead, not yet reaped)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19] if len(fields) > 19 else None


def _scope() -> str | None:
    """This machine's boot and PID namespace: where a pid means the same process."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{ns}" if boot else None


def process_token(pid: int | None = None) -> str:
    """An identity of process ``pid`` (default: this one) that :func:`token_alive` can check
    from another process on this machine; "" where /proc does not tell (not Linux)."""
    pid = os.getpid() if pid is None else pid
    scope, start = _scope(), _start_time(pid)
    return f"{scope}|{pid}|{start}" if scope and start else ""


def token_alive(token: str) -> bool | None:
    """Is the process of ``token`` alive? None when this machine cannot tell (another machine,
    another PID namespace, no /proc, an empty token)."""
    try:
        scope, pid, start = token.rsplit("|", 2)
    except ValueError:
        return None
    if not scope or scope != _scope():
        return None
    return _start_time(int(pid)) == start


__all__ = ["THREADS_ENV", "apply_thread_share", "process_token", "run_children",
           "token_alive", "worker_env"]
