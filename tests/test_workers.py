"""The forked map the corpus build runs its per-file stages on: results, errors, dead workers, cleanup."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from fimtune.corpus.workers import WorkerError, forked_map


def children() -> set[int]:
    """Processes whose parent is this one (zombies included: a child that was not reaped is still listed)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found


@pytest.fixture(autouse=True)
def no_children_left() -> object:
    before = children()
    yield
    assert children() == before


def square_with_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_every_item_once_whatever_the_workers_and_chunks() -> None:
    items = list(range(57))
    for workers, chunk in ((1, 1), (2, 1), (3, 4), (8, 16)):
        results = dict(forked_map(square_with_pid, items, workers, chunk))
        assert sorted(results) == items
        assert all(value == i * i for i, (value, _) in results.items())
        pids = {pid for _, pid in results.values()}
        assert os.getpid() not in pids and 1 <= len(pids) <= workers


def test_workers_read_the_items_from_shared_memory_not_pickles() -> None:
    # A lambda in the items cannot be pickled: the workers get the list by fork.
    items = [lambda: 1, lambda: 2]
    assert dict(forked_map(lambda f: f(), items, 2, 1)) == {0: 1, 1: 2}


def failing(x: int) -> int:
    if x == 5:
        raise ValueError("file 5 is bad")
    return x


def test_an_error_in_a_worker_is_raised_as_itself_with_the_workers_traceback() -> None:
    with pytest.raises(ValueError, match="file 5 is bad") as caught:
        list(forked_map(failing, list(range(20)), 2, 1))
    cause = caught.value.__cause__
    assert isinstance(cause, WorkerError) and "in failing" in str(cause) and 'raise ValueError("file 5' in str(cause)


class Unpicklable(Exception):
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("cannot pickle this")


def raises_unpicklable(x: int) -> int:
    raise Unpicklable("made in the worker")


def test_an_error_that_does_not_pickle_arrives_as_its_traceback() -> None:
    with pytest.raises(WorkerError, match="Unpicklable: made in the worker"):
        list(forked_map(raises_unpicklable, [1, 2], 2, 1))


def dies(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    return x


def test_a_worker_that_dies_is_reported_instead_of_waited_for() -> None:
    with pytest.raises(WorkerError, match="killed by signal 9"):
        list(forked_map(dies, list(range(10)), 2, 1))


def ignores_ctrl_c(x: int) -> int:
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaches every process of the terminal's group
    return x


def test_workers_leave_ctrl_c_to_the_parent() -> None:
    assert sorted(dict(forked_map(ignores_ctrl_c, list(range(6)), 2, 1))) == list(range(6))


def slow(x: int) -> int:
    time.sleep(0.05)
    return x


def test_stopping_early_kills_and_reaps_the_workers() -> None:
    results = forked_map(slow, list(range(400)), 2, 1)
    assert next(results)[0] in range(400)
    started = time.perf_counter()
    results.close()  # what a KeyboardInterrupt in the consumer does to the generator
    assert time.perf_counter() - started < 5  # not the 10 s the remaining items would take
