"""Map a function over a list on forked worker processes that share the list with the parent.

multiprocessing.Pool pickles every job to its worker and runs three threads in the parent to hand jobs out and
take results in; with a few hundred files of a few milliseconds each, that bookkeeping took a tenth of the
parent's CPU time and slowed the workers it shares the cores with. Here the workers are forked after the jobs
exist, so they read them from memory they share with the parent, take chunks of job indices from a shared
counter (in the order the caller gives them), and send each chunk's results back on their own pipe.
The parent only waits on the pipes.

A worker that raises sends its exception back and the parent raises it (chained to a WorkerError holding the
worker's traceback), so a ConfigError found in a worker still reaches the CLI as one line; a worker that dies
(killed, out of memory) is reported by the parent instead of leaving it waiting. Workers ignore Ctrl-C: the
parent gets it, and its cleanup kills and reaps them.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import traceback
from collections.abc import Callable, Generator, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.sharedctypes import Synchronized
from typing import NoReturn, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")

_RESULTS = "results"
_DONE = "done"
_ERROR = "error"


class WorkerError(RuntimeError):
    """A worker process failed; the message holds its traceback or how it ended."""


def forked_map(
    fn: Callable[[T], R], items: Sequence[T], workers: int, chunk: int
) -> Generator[tuple[int, R], None, None]:
    """Yield (index, fn(items[index])) for every item, in the order results arrive, computed on `workers`
    forked processes that take `chunk` consecutive indices at a time."""
    ctx = mp.get_context("fork")
    counter = ctx.Value("q", 0)
    pipes: dict[Connection, int] = {}  # the workers still sending
    pids: list[int] = []
    try:
        for _ in range(workers):
            receive, send = ctx.Pipe(duplex=False)
            pid = os.fork()
            if pid == 0:  # pragma: no cover (runs in the child; its coverage is not collected)
                receive.close()
                _work(fn, items, chunk, counter, send)
            send.close()
            pipes[receive] = pid
            pids.append(pid)
        while pipes:
            for ready in wait(list(pipes)):
                conn = cast(Connection, ready)
                try:
                    message = conn.recv()
                except EOFError:
                    pid = pipes.pop(conn)
                    raise WorkerError(f"worker process {pid} ended without its results ({_ended(pid)})") from None
                if message[0] == _DONE:
                    del pipes[conn]
                    conn.close()
                elif message[0] == _ERROR:
                    _, error, trace = message
                    where = WorkerError(f"in worker process {pipes[conn]}:\n{trace}")
                    if error is None:
                        raise where
                    raise error from where  # the worker's own exception, as multiprocessing.Pool re-raises it
                else:  # _RESULTS
                    yield from message[1]
    finally:
        _stop(pipes, pids)


def _work(
    fn: Callable[[T], R], items: Sequence[T], chunk: int, counter: Synchronized[int], send: Connection
) -> NoReturn:
    """A worker's loop: claim the next chunk, send its results; never returns (the child exits here)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    status = 0
    try:
        while True:
            with counter.get_lock():
                start = counter.value
                counter.value = start + chunk
            if start >= len(items):
                break
            send.send((_RESULTS, [(i, fn(items[i])) for i in range(start, min(start + chunk, len(items)))]))
        send.send((_DONE,))
    except BaseException as e:
        status = 1
        trace = traceback.format_exc()
        try:
            send.send((_ERROR, e, trace))
        except BaseException:  # an exception that does not pickle: its traceback as text
            with contextlib.suppress(BaseException):
                send.send((_ERROR, None, trace))
    finally:
        os._exit(status)  # no atexit handlers or finalizers of the parent's objects run in the child


def _ended(pid: int) -> str:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "already reaped"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _stop(pipes: dict[Connection, int], pids: list[int]) -> None:
    """Kill the workers still running and reap every child this map started."""
    for conn, pid in pipes.items():
        conn.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
