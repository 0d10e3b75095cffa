"""Signals and child processes: SIGTERM stops a run like Ctrl-C (the same clean-up runs), and children end with
their parent. Ground floor: imports nothing of compress but its errors."""

from __future__ import annotations

import contextlib
import signal
import sys

from compress.errors import Interrupted

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


# The signals received and not yet seen propagating (signal dispositions are process-wide state already). Python
# raises a signal's exception in whatever code runs next: inside a library's finalizer (__del__) it is printed as
# "Exception ignored" and dropped, and the run would go on as if no one had pressed Ctrl-C.
_pending: list[int] = []


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises Interrupted (a KeyboardInterrupt) in the main thread: temporaries are removed and
    subprocess.run kills its child before the process exits 143. Ctrl-C raises KeyboardInterrupt as before; both
    are also recorded, so that raise_if_lost() can stop the run at a stage's end if the exception was swallowed."""
    def handler(signum, frame):
        _pending.append(signum)
        raise Interrupted(signum) if signum != signal.SIGINT else KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored (nohup, &)
        signal.signal(signal.SIGINT, handler)


def raise_if_lost() -> None:
    """Raise the interrupt of a signal that arrived but whose exception never reached this point's caller."""
    if _pending:
        signum = _pending[-1]
        _pending.clear()
        raise Interrupted(signum) if signum != signal.SIGINT else KeyboardInterrupt


def exit_code(exc: BaseException) -> int:
    """130 for Ctrl-C, 143 for SIGTERM (128 + the signal's number)."""
    return 128 + exc.signal if isinstance(exc, Interrupted) else 130


def signal_name(exc: BaseException) -> str:
    return signal.Signals(exc.signal).name if isinstance(exc, Interrupted) else "Ctrl-C"


def run_child(command: list[str], grace: float = 30.0, **popen) -> int:
    """Run `command` to its end and return its exit code; if this process is interrupted meanwhile (Ctrl-C,
    SIGTERM), the child gets SIGTERM (a launcher such as torchrun passes it on to its workers), then SIGKILL after
    `grace` seconds. The child also dies with this process on SIGKILL (die_with_parent)."""
    return run_children([command], grace=grace, **popen)[0]


def run_children(commands: list[list[str]], poll=None, interval: float = 1.0, grace: float = 30.0,
                 logs: list | None = None, **popen) -> list[int]:
    """run_child for several commands at once: their exit codes, in order. `poll()`, if given, is called every
    `interval` seconds while any runs (a progress bar); `logs`: one open file per command for its stdout and
    stderr. Interrupted, every child still running gets SIGTERM, then SIGKILL after `grace` seconds."""
    import subprocess

    procs = []
    try:
        for k, command in enumerate(commands):
            output = {"stdout": logs[k], "stderr": subprocess.STDOUT} if logs else {}
            procs.append(subprocess.Popen(command, preexec_fn=die_with_parent, **output, **popen))
        while any(p.poll() is None for p in procs):
            try:
                next(p for p in procs if p.poll() is None).wait(interval)
            except subprocess.TimeoutExpired:
                pass
            if poll is not None:
                poll()
        if poll is not None:
            poll()
        return [p.returncode for p in procs]
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise


def die_with_parent() -> None:
    """preexec_fn for subprocesses: Linux kills the child when the parent dies, even by SIGKILL (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@contextlib.contextmanager
def stopped_in(where: str):
    """Ctrl-C or SIGTERM inside: the exception carries `where` (a stage name) for the CLI's one line."""
    try:
        yield
    except KeyboardInterrupt as exc:
        _pending.clear()  # on its way out: not lost
        if not getattr(exc, "stage", None):
            exc.stage = where
        raise


class Stopped(Exception):
    """A KeyboardInterrupt (Ctrl-C, or SIGTERM as Interrupted) carried out of a CLI command as an ordinary exception:
    typer turns a KeyboardInterrupt into a bare exit code, losing the signal and where the run stopped."""

    def __init__(self, interrupt: KeyboardInterrupt):
        super().__init__(str(interrupt))
        self.interrupt = interrupt


def stoppable(command):
    """Decorator for CLI commands: a KeyboardInterrupt inside leaves as Stopped (the CLI prints one line)."""
    import functools

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as exc:
            raise Stopped(exc) from None

    return wrapper
