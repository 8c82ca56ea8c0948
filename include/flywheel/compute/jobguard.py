"""The parent of a local job: ends the job's whole process group when the worker that started it dies.

:func:`flywheel.compute.local.run_local` starts ``python -I -S jobguard.py WORKER_PID PID_FD -- COMMAND``
in a new session, so this process leads a process group that the job and everything it starts join.
A worker killed with SIGKILL (the OOM killer, a lost node, ``airflow tasks`` killed) cannot clean up
after itself; without this guard its job would go on writing to the output URI that the task's retry
is writing to. The guard ends the group (SIGKILL) as soon as the worker is gone: Linux tells it at
once (``PR_SET_PDEATHSIG``), and every :data:`POLL_S` it also checks that its parent is still the
worker (which covers other systems and a worker that died before the guard asked Linux). SIGTERM,
SIGINT and SIGHUP sent to the guard while the worker lives are passed on to the whole group: the job
ends of the signal, and the guard exits as the job did (the worker kills what is left).

Otherwise the guard passes the job through: it writes the job's pid to ``PID_FD`` (the worker samples
the job's memory), and exits as the job did, with its exit code or killed by the same signal (a job
SIGKILLed by the OOM killer still reads as killed by SIGKILL). Only the standard library is imported,
and the file runs by path with ``-I -S``: it starts in a few milliseconds and nothing from the job's
environment (``PYTHONPATH``, site packages) can change it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import NoReturn

POLL_S = 0.5
"""How often the guard checks that the worker that started it is still its parent."""

_PR_SET_PDEATHSIG = 1
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def main(argv: list[str]) -> int:
    """Run ``COMMAND`` as the guarded job; returns its exit code (or dies of the signal that ended it)."""
    if len(argv) < 4 or argv[2] != "--":
        print("usage: jobguard.py WORKER_PID PID_FD -- COMMAND...", file=sys.stderr)
        return 2
    worker, pid_fd, command = int(argv[0]), int(argv[1]), argv[3:]

    def on_signal(number: int, frame: object) -> None:
        if os.getppid() != worker:  # the worker is gone (Linux's parent-death signal): nobody else will
            _end_group()
        # Stopped from outside (a worker shutting down, a person): the job sees the signal, not a SIGKILL
        # that would read as the OOM killer's; the guard itself waits for the job.
        signal.signal(number, signal.SIG_IGN)
        os.killpg(0, number)

    for number in _ENDING_SIGNALS:
        signal.signal(number, on_signal)
    _signal_when_parent_dies(signal.SIGTERM)
    if os.getppid() != worker:  # the worker died before the guard could ask to be told
        _end_group()
    try:
        job = subprocess.Popen(command)  # nosec B603 # the job's own argv, no shell
    except OSError as exc:
        os.close(pid_fd)
        print(f"cannot start the job {command[0]!r}: {exc}", file=sys.stderr, flush=True)
        return 127
    with os.fdopen(pid_fd, "w") as pid_file:
        pid_file.write(f"{job.pid}\n")
    while True:
        try:
            code = job.wait(timeout=POLL_S)
            break
        except subprocess.TimeoutExpired:
            if os.getppid() != worker:
                _end_group()
    if code < 0:
        _die_of(-code)
    return code


def _end_group() -> NoReturn:
    """SIGKILL the whole process group: the job, whatever it started, and this guard."""
    os.killpg(0, signal.SIGKILL)
    raise SystemExit(128 + signal.SIGKILL)  # not reached: the guard is in the group


def _signal_when_parent_dies(number: int) -> None:
    """Ask Linux to send ``number`` when the thread that started this process exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(number), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the poll of the parent pid still ends the group, within POLL_S


def _die_of(number: int) -> NoReturn:
    """End this process with the job's signal, so the worker sees what the job saw (no core file)."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if number not in (signal.SIGKILL, signal.SIGSTOP):  # their handlers cannot be set
        signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)
    raise SystemExit(128 + number)  # a signal that does not end a process (SIGCHLD ...)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
