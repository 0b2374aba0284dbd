"""The Ollama engine: POST /api/generate with fimtune's raw FIM prompt, streamed as newline-delimited JSON."""

from __future__ import annotations

import logging
import threading
from typing import Any

from fimtune.engines.base import Completion, EngineError, EngineRequest, EngineSettings, StopReason
from fimtune.engines.http import BadAnswer, Delta, HttpStream, ServerError, as_int, merge_extra, ndjson_payloads

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://127.0.0.1:11434"


class OllamaEngine:
    """Sends the rendered prompt with `raw: true`, so Ollama applies no chat template and the model sees exactly
    fimtune's FIM layout; num_predict, temperature and stop go in `options` (`extra: {options: {...}}` adds
    more, e.g. num_ctx). `model` is an Ollama model name: one made with a Modelfile (FROM the GGUF of the merged
    model, or FROM a base with ADAPTER) and `ollama create`.
    """

    name = "ollama"

    def __init__(self, settings: EngineSettings) -> None:
        if not settings.model:
            raise EngineError("ollama engine: set model to an Ollama model name (`ollama list` shows them)")
        self.settings = settings
        self._warned = False
        self.http = HttpStream(
            "ollama",
            settings,
            DEFAULT_ENDPOINT,
            not_found_hint=(
                f"Set model to one `ollama list` shows, or create {settings.model!r} with `ollama create "
                f"{settings.model} -f Modelfile`"
            ),
        )

    def complete(self, request: EngineRequest, cancel: threading.Event | None = None) -> Completion:
        if request.prompt_ids is not None and not self._warned:
            self._warned = True
            log.warning(
                "ollama: %s spells a template token; Ollama takes no token ids and reads that spelling as the token "
                "(training read its characters). Serve with --engine openai or llamacpp to keep them apart",
                request.fim.path,
            )
        stops = tuple(dict.fromkeys(s for s in request.stop if s))
        body: dict[str, Any] = {
            "model": self.settings.model,
            "prompt": request.rendered.prompt,
            "raw": True,
            "stream": True,
            "options": {"num_predict": request.max_tokens, "temperature": request.temperature, "stop": list(stops)},
        }
        body = merge_extra(body, self.settings.extra)
        return self.http.post("/api/generate", body, request, ndjson_payloads, decode_line, cancel)

    def check(self) -> None:
        self.http.check()

    def close(self) -> None:
        self.http.close()


def decode_line(payload: dict[str, Any]) -> Delta:
    """One /api/generate line: `response` (the next piece) and `done`; the last (`done: true`) has `done_reason`
    ("stop": end token or a stop string, "length": num_predict reached), `prompt_eval_count` and `eval_count`.
    An error, also mid-stream, is a line {"error": "..."}."""
    if "error" in payload:
        raise ServerError(str(payload["error"]))
    response = payload.get("response", "")
    if not isinstance(response, str) or ("response" not in payload and "done" not in payload):
        raise BadAnswer(f"an /api/generate line without `response`: {str(payload)[:200]}")
    if not payload.get("done"):
        return Delta(response)
    finish: StopReason = "length" if payload.get("done_reason") == "length" else "end"
    return Delta(response, finish, as_int(payload.get("prompt_eval_count")), as_int(payload.get("eval_count")))
