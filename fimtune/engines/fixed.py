"""A deterministic engine: answers a configured text (tests, benchmarks of server overhead, wiring checks)."""

from __future__ import annotations

import threading
import time

from fimtune.engines.base import Completion, EngineError, EngineRequest, EngineSettings, StopReason


class FixedEngine:
    """Returns `fixed_text` (cut at the first stop string and at max_tokens characters) after `fixed_delay_s`,
    or raises `fixed_error`. Counts its calls, so tests can assert how often a model would have run."""

    name = "fixed"

    def __init__(self, settings: EngineSettings) -> None:
        self.text = settings.fixed_text
        self.delay_s = settings.fixed_delay_s
        self.error = settings.fixed_error
        self.calls = 0
        self._lock = threading.Lock()

    def complete(self, request: EngineRequest, cancel: threading.Event | None = None) -> Completion:
        start = time.perf_counter()
        with self._lock:
            self.calls += 1
        if self.delay_s > 0:
            waiter = cancel or threading.Event()
            if waiter.wait(self.delay_s):
                return Completion("", "cancelled", time.perf_counter() - start)
        elif cancel is not None and cancel.is_set():
            return Completion("", "cancelled", time.perf_counter() - start)
        if self.error:
            raise EngineError(f"fixed engine: {self.error}")
        reason: StopReason
        text, reason = self.text, "end"
        cuts = [i for i in (text.find(s) for s in request.stop if s) if i >= 0]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        if request.settled is not None:  # as a streaming engine asks it: after every piece (here a character)
            done = next((k for k in range(1, len(text) + 1) if request.settled(text[:k])), None)
            if done is not None and done < len(text):
                text, reason = text[:done], "stop"
        if len(text) > request.max_tokens:
            text, reason = text[: request.max_tokens], "length"
        return Completion(text, reason, time.perf_counter() - start, completion_tokens=len(text))

    def close(self) -> None:
        pass
