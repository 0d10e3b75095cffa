"""Progress in logs (issue 17): a plain line at least every interval when the output is not a terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import pytest
from rich.console import Console

from compress.progress import Tracker, clock_text, interval_s, track

LINE = re.compile(r"^\[progress\] .*elapsed (\d+):(\d\d):(\d\d)", re.M)


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def test_track_plain_lines_every_interval():
    console, buffer = _console()
    with track(console, "work", total=20, interval=0.05) as tick:
        for _ in range(20):
            time.sleep(0.02)
            tick()
    lines = [line for line in buffer.getvalue().splitlines() if line.startswith("[progress] work")]
    assert len(lines) >= 4  # several heartbeats (0.4 s at 0.05 s), and the last
    assert lines[-1].startswith("[progress] work: step 20/20 100%") and "steps/s" in lines[-1]
    assert any("left ~" in line for line in lines[1:])


def test_track_heartbeat_prints_while_one_step_is_slow():
    console, buffer = _console()
    with track(console, "slow", interval=0.05) as tick:
        tick.update(completed=1, text="loss 0.5")
        time.sleep(0.4)  # no update for 8 intervals: the heartbeat still reports
    lines = buffer.getvalue().splitlines()
    assert len(lines) >= 5 and all("| loss 0.5" in line for line in lines)


@pytest.mark.parametrize("terminal, enabled, expect_plain", [
    (True, True, False),   # a terminal: the rich bar, no plain lines
    (False, False, False),  # a non-zero rank: nothing
    (False, True, True),
])
def test_track_modes(terminal, enabled, expect_plain):
    console, buffer = _console()
    with track(console, "mode", total=2, interval=0.02, terminal=terminal, enabled=enabled) as tick:
        tick()
        time.sleep(0.1)
        tick()
    assert ("[progress] mode" in buffer.getvalue()) == expect_plain


def test_track_short_work_prints_nothing():
    console, buffer = _console()
    with track(console, "quick", total=2, interval=10) as tick:
        tick()
    assert buffer.getvalue() == ""


@pytest.mark.parametrize("fraction, completed, total, expected", [
    (None, 5, 10, ["step 5/10", "50%", "steps/s", "left ~0:00:10"]),
    (0.25, 30, None, ["step 30", "25%", "left ~0:00:30"]),
    (None, 0, None, ["working", "elapsed 0:00:10"]),
])
def test_tracker_line_says_step_rate_and_time_left(fraction, completed, total, expected):
    now = [0.0]
    tracker = Tracker("t", total, "step", lambda: now[0])
    now[0] = 10.0
    tracker.update(completed=completed, fraction=fraction)
    line = tracker.line()
    assert all(part in line for part in expected), line


def test_interval_env_and_clock(monkeypatch):
    monkeypatch.setenv("COMPRESS_PROGRESS_INTERVAL", "0.5")
    assert interval_s() == 0.5
    monkeypatch.setenv("COMPRESS_PROGRESS_INTERVAL", "nonsense")
    assert interval_s() == 30.0
    assert clock_text(3725) == "1:02:05"


def test_progress_in_log_file_during_long_training(tmp_path, tiny_bert, tiny_texts):
    """A run whose output is a file shows a progress line at least every interval while a stage trains (the
    stage is made long on purpose: max_steps far beyond its 8 s budget; interval 0.5 s stands for 30 s)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""version: 1
name: progress
task: sentence-embedding
teacher: {{source: {tiny_bert}}}
data: {{source: {tiny_texts}, eval_size: 20, max_length: 16}}
stages:
  - {{kind: distill, student: {{from_teacher: {{layers: [0]}}}}, max_steps: 100000, max_minutes: 0.13,
     batch_size: 8, eval_every: 0, checkpoint_every: 0}}
""")
    log = tmp_path / "run.log"
    env = {**os.environ, "COMPRESS_PROGRESS_INTERVAL": "0.5", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as handle:
        subprocess.run([sys.executable, "-m", "compress.cli", "run", str(recipe), "--out", str(tmp_path / "run")],
                       stdout=handle, stderr=subprocess.STDOUT, env=env, check=True, timeout=300)
    text = log.read_text()
    training = [line for line in text.splitlines() if line.startswith("[progress] distill: training")]
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in
               (LINE.match(line).groups() for line in training)]
    assert len(training) >= 8, text[-2000:]  # ~8 s of training at one line per 0.5 s
    assert max(b - a for a, b in zip(seconds, seconds[1:])) <= 2  # never a silent stretch
    assert "steps/s" in training[-1] and "left ~" in training[-2] and "| loss" in training[-1]
