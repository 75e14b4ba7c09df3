"""The progress throttle and its registry on plain values, with a fake clock: a report every
2 s or every 100,000 rows, whichever comes first, and the final count once."""
from __future__ import annotations

from components.evaluate import progress
from components.evaluate.progress import RowProgress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reports_every_100k_rows_or_2_seconds_and_the_final_count_once():
    clock, reported = Clock(), []
    rows = RowProgress(reported.append, clock=clock)
    for _ in range(30):  # 30 batches of 4096 rows in no time: every 100k rows
        rows.add(4096)
    assert reported == [102_400]
    clock.now = 2.5  # a slow batch: 2 s passed
    rows.add(4096)
    assert reported == [102_400, 126_976]
    clock.now = 3.0
    rows.add(10)
    assert reported == [102_400, 126_976]
    rows.finish()
    rows.finish()
    assert reported == [102_400, 126_976, 126_986]


def test_the_final_count_is_not_repeated_when_it_was_just_reported():
    reported = []
    rows = RowProgress(reported.append, every_rows=10, clock=Clock())
    rows.add(10)
    rows.finish()
    assert reported == [10]


def test_rows_count_for_the_run_that_registered_the_token_only():
    reported = []
    token = progress.register(RowProgress(reported.append, every_rows=1, clock=Clock()))
    try:
        progress.add(token, 5)
        progress.add("another run", 7)
        progress.add(None, 9)
    finally:
        progress.unregister(token)
    progress.add(token, 11)
    assert reported == [5]
