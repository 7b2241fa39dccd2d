"""Helpers of the reliability suite: forked workers that can be killed, held locks, a tiny screen.

Workers are forked from the test process (``multiprocessing`` "fork"), so they start with torch
and perturbflow already imported: a kill -9 test costs the work it interrupts, not seconds of
imports. The slow variants with fresh ``perturbflow`` processes live in
``benchmarks/reliability.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FORK = multiprocessing.get_context("fork")


def kill_when(target: Callable[[], None], ready: Callable[[], bool], timeout: float = 60.0) -> int:
    """Run ``target`` in a forked process and SIGKILL it as soon as ``ready()`` is true.

    Returns the worker's exit code (``-SIGKILL`` when it was killed). Fails the test when the
    worker ends on its own first, or ``ready`` never becomes true.
    """
    worker = FORK.Process(target=target, daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout
    while not ready():
        if not worker.is_alive():
            pytest.fail(f"the worker ended (exit code {worker.exitcode}) before it could be killed")
        if time.monotonic() > deadline:
            worker.kill()
            pytest.fail("the worker never reached the point where it should be killed")
        time.sleep(0.002)
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(timeout=10)
    return worker.exitcode


def _hold(path: Path, held, release) -> None:
    from perturbflow.data.outputs import lock_output_dir

    lock_output_dir(path)
    held.set()
    release.wait(30)


@contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[int]:
    """``path`` locked (:func:`perturbflow.data.outputs.lock_output_dir`) by another process for
    the duration of the block; yields that process's pid."""
    held, release = FORK.Event(), FORK.Event()
    worker = FORK.Process(target=_hold, args=(path, held, release), daemon=True)
    worker.start()
    assert held.wait(10), "the other process did not lock the folder"
    try:
        yield worker.pid
    finally:
        release.set()
        worker.join(timeout=10)


@pytest.fixture(scope="session")
def screen_file(simulated_screen, tmp_path_factory) -> Path:
    """The tiny simulated screen as an .h5ad file (obs column ``condition``)."""
    path = tmp_path_factory.mktemp("screen") / "screen.h5ad"
    simulated_screen("tiny").write_h5ad(path)
    return path
