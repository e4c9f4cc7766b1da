"""diffvae.device's view of the machine's load: the cores other processes keep busy (from /proc/stat, less this
process's own CPU time) and the threads a run takes beside them."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from diffvae import device
from diffvae.device import busy_cores_elsewhere, threads_beside


def _stat_line(user: int, idle: int, iowait: int) -> str:
    return f"cpu  {user} 0 0 {idle} {iowait} 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n"


def test_busy_cores_count_the_machines_busy_time_less_our_own(tmp_path, monkeypatch):
    """A simulated second: others add 1.5 cores of user time; idle and iowait jiffies never count as busy, and
    this process's own CPU time (os.times) is taken off."""
    tick = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    stat.write_text(_stat_line(1000, 5000, 300))
    clock = SimpleNamespace(now=0.0, own=2.0)

    def sleep(seconds):
        clock.now += seconds
        clock.own += 0.25  # our own 0.25 core-seconds in that second
        stat.write_text(_stat_line(1000 + int(1.75 * tick), 5000 + int(0.2 * tick), 300 + int(0.05 * tick)))

    fake_time = SimpleNamespace(sleep=sleep, perf_counter=lambda: clock.now)
    monkeypatch.setattr(device, "time", fake_time)
    monkeypatch.setattr(device.os, "times", lambda: SimpleNamespace(user=clock.own, system=0.0, children_user=0.0,
                                                                    children_system=0.0))
    assert busy_cores_elsewhere(1.0, stat_path=str(stat)) == pytest.approx(1.5, abs=2.0 / tick)


def test_without_a_stat_file_the_load_is_unknown(tmp_path):
    assert busy_cores_elsewhere(0.0, stat_path=str(tmp_path / "absent")) is None
    (tmp_path / "odd").write_text("cpu not numbers\n")
    assert busy_cores_elsewhere(0.0, stat_path=str(tmp_path / "odd")) is None


@pytest.mark.parametrize("busy, limit, cores, expected", [
    (None, 2, 2, 2),   # load unknown: as started
    (0.0, 2, 2, 2),
    (0.3, 2, 2, 2),    # a little noise is not a busy core
    (0.6, 2, 2, 1),
    (2.0, 2, 2, 1),    # both cores taken: one thread (never zero)
    (5.0, 8, 4, 1),
    (1.0, 4, 16, 4),   # never more than the run started with
    (0.0, 1, 16, 1),
])
def test_threads_are_the_cores_left_within_the_starting_count(busy, limit, cores, expected):
    assert threads_beside(busy, limit, cores) == expected
