"""Progress is never silent: ``autoseg.terminal.Heartbeat`` with a fake clock (no sleeping)."""

from __future__ import annotations

import logging
import re

import pytest

from autoseg.terminal import (
    PROGRESS_LINE,
    Heartbeat,
    HideProgressLines,
    format_duration,
    set_progress_interval,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture):
    """The progress lines logged so far, with the fake time at which each was written."""
    caplog.set_level(logging.INFO, logger="autoseg.progress")
    return lambda: [r.getMessage() for r in caplog.records if getattr(r, PROGRESS_LINE, False)]


def test_a_line_at_least_every_interval_with_done_total_and_time_left(lines) -> None:
    clock, written_at = FakeClock(), []
    with Heartbeat(title="predict", interval=30, clock=clock) as beat:
        task = beat.add_task("case_007 tiles", total=100, unit="tile")
        for _ in range(100):
            clock.now += 7.0  # one tile: 7 s
            before = len(lines())
            beat.advance(task)
            if len(lines()) > before:
                written_at.append(clock.now)
    start, end = 1000.0, 1000.0 + 700.0
    gaps = [b - a for a, b in zip([start, *written_at], [*written_at, end], strict=True)]
    assert max(gaps) < 30 + 7  # never more than an interval (plus the step in progress)
    assert min(gaps[:-1]) >= 30  # and not more often than asked
    first = lines()[0]  # after 35 s: 5 tiles
    assert first == "predict: case_007 tiles 5/100 (5%), 7.00 s/tile, 11m05s left"
    for line in lines():
        done = int(re.search(r"tiles (\d+)/100", line).group(1))
        assert f"{format_duration((100 - done) * 7.0)} left" in line


def test_no_line_before_the_interval_and_one_per_step_at_interval_zero(lines) -> None:
    clock = FakeClock()
    with Heartbeat(title="train", interval=30, clock=clock) as beat:
        task = beat.add_task("epoch 1/2 train", total=250, unit="it")
        clock.now += 29.0
        beat.advance(task, 10)
    assert lines() == []
    with Heartbeat(title="train", interval=0, clock=clock) as beat:
        task = beat.add_task("epoch 1/2 train", total=4, unit="it")
        for _ in range(4):
            clock.now += 0.5
            beat.advance(task)
    assert [re.search(r"train (\d/4)", line).group(1) for line in lines()] == [
        "1/4",
        "2/4",
        "3/4",
        "4/4",
    ]
    assert lines()[-1].endswith("2.00 it/s, 0s left")


def test_a_line_names_every_visible_task_and_restarts_the_rate_on_reset(lines) -> None:
    clock = FakeClock()
    with Heartbeat(title="predict", interval=0, clock=clock) as beat:
        cases = beat.add_task("cases", total=2, unit="case")
        tiles = beat.add_task("tiles", unit="tile", visible=False)
        beat.reset(tiles, description="a tiles")
        clock.now += 100.0  # the first case's tiles took 100 s
        beat.update(tiles, completed=10, total=10)
        beat.advance(cases)
        beat.reset(tiles, description="b tiles")
        cases_line = "cases 1/2 (50%), 100.00 s/case, 1m40s left"
        assert beat.line() == f"predict: {cases_line}; b tiles starting"
        clock.now += 1.0
        beat.update(tiles, completed=1, total=20)  # measured from the reset: 1 s per tile
    assert lines()[-1].endswith("b tiles 1/20 (5%), 1.00 tile/s, 19s left")


def test_the_background_thread_writes_while_one_step_outlasts_the_interval(lines) -> None:
    import time

    with Heartbeat(title="plan", interval=0.05) as beat:
        beat.add_task("preprocess big", total=1, unit="case")
        time.sleep(0.3)  # one step that outlasts the interval several times
    assert len(lines()) >= 2
    assert all(line == "plan: preprocess big 0/1 (0%)" for line in lines())


def test_disabled_heartbeat_writes_nothing(lines) -> None:
    clock = FakeClock()
    with Heartbeat(title="train", interval=0, clock=clock, enabled=False) as beat:
        task = beat.add_task("x", total=3)
        clock.now += 100
        beat.advance(task)
    assert lines() == []


def test_console_filter_drops_only_progress_lines() -> None:
    keep = logging.LogRecord("autoseg", logging.INFO, __file__, 1, "epoch 3: loss", None, None)
    drop = logging.LogRecord("autoseg.progress", logging.INFO, __file__, 1, "x", None, None)
    setattr(drop, PROGRESS_LINE, True)
    assert HideProgressLines().filter(keep) and not HideProgressLines().filter(drop)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0s"), (59.4, "59s"), (65, "1m05s"), (3599, "59m59s"), (7620, "2h07m"), (-1, "?")],
)
def test_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="progress interval"):
        set_progress_interval(-1)
