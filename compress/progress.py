"""Progress of long work (teacher outputs, training, generation, calibration, the accuracy search, bench).

On a terminal: a rich bar. When the output is a file or a pipe (CI, the GitHub Action's log), a bar draws
nothing until it ends, so a plain line is printed instead, every `interval` seconds (30 by default,
$COMPRESS_PROGRESS_INTERVAL to change it) by a heartbeat thread, also while one slow step is running, and once at
the end (work shorter than one interval prints none):

    [progress] distill: training: step 120/1000 (12%), 4.10 steps/s, elapsed 0:00:30, left ~0:03:34 | loss 0.41

Ground floor: imports rich and the standard library only.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

DEFAULT_INTERVAL_S = 30.0
INTERVAL_ENV = "COMPRESS_PROGRESS_INTERVAL"
PREFIX = "[progress]"


def interval_s() -> float:
    """Seconds between plain progress lines: $COMPRESS_PROGRESS_INTERVAL when it is a positive number, else 30."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, ""))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def clock_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Tracker:
    """What a piece of long work reports: items done (of `total`), or a fraction, and a free text."""

    def __init__(self, label: str, total: int | None, unit: str, clock: Callable[[], float]):
        self.label, self.total, self.unit, self.clock = label, total, unit, clock
        self.started = clock()
        self.completed = 0.0
        self.fraction: float | None = None
        self.text = ""
        self._lock = threading.Lock()
        self.listeners: list[Callable[[], None]] = []

    def update(self, completed: float | None = None, fraction: float | None = None, text: str | None = None,
               advance: float | None = None) -> None:
        with self._lock:
            if advance is not None:
                self.completed += advance
            if completed is not None:
                self.completed = completed
            if fraction is not None:
                self.fraction = min(max(fraction, 0.0), 1.0)
            if text is not None:
                self.text = text
        for listener in self.listeners:
            listener()

    def advance(self, n: float = 1, text: str | None = None) -> None:
        self.update(advance=n, text=text)

    def __call__(self, fraction: float | None = None, text: str | None = None) -> None:
        """`tick()`: one more item; `tick(fraction, text)`: where the work stands (training's form)."""
        if fraction is None:
            self.update(advance=1, text=text)
        else:
            self.update(fraction=fraction, text=text)

    def done_fraction(self) -> float | None:
        if self.fraction is not None:
            return self.fraction
        if self.total:
            return min(self.completed / self.total, 1.0)
        return None

    def line(self) -> str:
        """One plain line: step, rate, time elapsed and left."""
        with self._lock:
            elapsed = max(self.clock() - self.started, 0.0)
            fraction, completed, text = self.done_fraction(), self.completed, self.text
        parts = []
        if self.total:
            parts.append(f"{self.unit} {completed:g}/{self.total}")
        elif completed:
            parts.append(f"{self.unit} {completed:g}")
        if fraction is not None:
            parts.append(f"{fraction:.0%}")
        head = f"{PREFIX} {self.label}: " + (" ".join(parts) if parts else "working")
        tail = []
        if completed and elapsed > 0:
            tail.append(f"{completed / elapsed:.2f} {self.unit}s/s")
        tail.append(f"elapsed {clock_text(elapsed)}")
        if fraction:
            tail.append(f"left ~{clock_text(elapsed * (1 - fraction) / fraction)}")
        return ", ".join([head, *tail]) + (f" | {text}" if text else "")


class _Heartbeat:
    """Prints the tracker's line every `interval` seconds until stopped (also when nothing changed)."""

    def __init__(self, tracker: Tracker, emit: Callable[[str], None], interval: float):
        self.tracker, self.emit, self.interval = tracker, emit, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"progress {tracker.label}", daemon=True)

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            self.emit(self.tracker.line())
            self.printed = True

    def __enter__(self) -> _Heartbeat:
        self.printed = False  # work shorter than one interval prints nothing: the stage's own lines suffice
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        if self.printed:
            self.emit(self.tracker.line())


def is_terminal(console) -> bool:
    return bool(getattr(console, "is_terminal", False)) and not getattr(console, "is_dumb_terminal", False)


@contextlib.contextmanager
def track(console, label: str, total: int | None = None, *, unit: str = "step", enabled: bool = True,
          interval: float | None = None, terminal: bool | None = None, transient: bool = False,
          clock: Callable[[], float] = time.monotonic) -> Iterator[Tracker]:
    """Report the progress of the work inside the block; yields a Tracker.

    `console` is a rich Console (the run's, on stderr). On a terminal a rich bar is drawn; otherwise a plain
    line every `interval` seconds (default interval_s()). `enabled=False` (e.g. a non-zero rank) reports nothing.
    `terminal` forces one mode or the other (tests).
    """
    tracker = Tracker(label, total, unit, clock)
    if not enabled:
        yield tracker
        return
    if terminal if terminal is not None else is_terminal(console):
        with _rich_bar(console, tracker, transient):
            yield tracker
        return

    def emit(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    with _Heartbeat(tracker, emit, interval or interval_s()):
        yield tracker


@contextlib.contextmanager
def _rich_bar(console, tracker: Tracker, transient: bool) -> Iterator[None]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=transient) as bar:
        task = bar.add_task(tracker.label, total=1000)

        def redraw() -> None:
            fraction = tracker.done_fraction()
            description = f"{tracker.label} {tracker.text}".strip()
            bar.update(task, completed=(fraction or 0.0) * 1000, description=description)

        tracker.listeners.append(redraw)
        yield
