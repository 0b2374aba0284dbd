"""The llama.cpp engine: llama-server's POST /infill (prefix, suffix and cross-file snippets), streamed over SSE."""

from __future__ import annotations

import threading
from typing import Any

from fimtune.engines.base import Completion, EngineError, EngineRequest, EngineSettings, StopReason
from fimtune.engines.http import (
    BadAnswer,
    Delta,
    HttpStream,
    ServerError,
    as_int,
    error_message,
    merge_extra,
    sse_payloads,
)
from fimtune.fim_format import PSM, get_template

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"

# llama-server's `stop_type` (since late 2024) and the booleans older servers sent instead.
STOP_TYPES: dict[str, StopReason] = {"eos": "end", "word": "stop", "limit": "length"}
LEGACY_STOP_FLAGS: tuple[tuple[str, StopReason], ...] = (
    ("stopped_eos", "end"),
    ("stopped_word", "stop"),
    ("stopped_limit", "length"),
)


class LlamaCppEngine:
    """Sends the cursor's prefix and suffix, and the cross-file snippets as `input_extra`, to llama-server's /infill.

    llama.cpp lays out the FIM prompt itself from the GGUF's own FIM tokens (FIM_PRE/SUF/MID, and FIM_REP/FIM_SEP
    for repo-level context), so fimtune's template is not used here and the bytes the model sees are close to,
    not identical with, what fimtune trains on (llama.cpp names the repository itself and has its own context
    budget). fimtune's budgets still decide what is sent: the prefix and suffix as rendering truncated them, and
    the snippets rendering kept, the most relevant last (nearest the cursor, as fimtune lays them out). For
    byte-identical prompts point the openai engine at the same llama-server (`/v1/completions`).

    /infill lays out prefix then suffix (or, with llama-server's --spm-infill, `[SUF] S [PRE] P [MID]`), so a
    template that puts the suffix first inside the prefix token (`fimtune-spm`, `codellama-spm`) is refused with
    the way out: the openai engine against the same server.

    The adapter must be merged into the base model and converted to GGUF first; `model` is only sent when set
    (llama-server's router mode picks a model by it).
    """

    name = "llamacpp"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.http = HttpStream(
            "llamacpp",
            settings,
            DEFAULT_ENDPOINT,
            not_found_hint="Set model to one the server lists at GET /models, or leave it empty",
            hints={
                "infill is not supported": (
                    "The GGUF has no FIM tokens: serve a base model trained with FIM (e.g. Qwen2.5-Coder), merged "
                    "with the adapter and converted with its own tokenizer"
                ),
            },
        )

    def complete(self, request: EngineRequest, cancel: threading.Event | None = None) -> Completion:
        template = get_template(request.rendered.template)
        if template.layout != PSM:
            raise EngineError(
                f"llamacpp: template {template.name} puts the suffix first, which llama.cpp's /infill does not lay "
                f"out; use --engine openai with --endpoint {self.http.endpoint} (fimtune sends its own prompt)"
            )
        stops = tuple(dict.fromkeys(s for s in request.stop if s))
        body: dict[str, Any] = {
            **infill_fields(request),
            "n_predict": request.max_tokens,
            "temperature": request.temperature,
            "stop": list(stops),
            "stream": True,
            "cache_prompt": True,
        }
        if self.settings.model:
            body["model"] = self.settings.model
        body = merge_extra(body, self.settings.extra)
        return self.http.post("/infill", body, request, sse_payloads, decode_message, cancel)

    def check(self) -> None:
        self.http.check()

    def close(self) -> None:
        self.http.close()


def infill_fields(request: EngineRequest) -> dict[str, Any]:
    """input_prefix / input_suffix as fimtune's budgets cut them, input_extra from the snippets rendering kept."""
    fim, rendered = request.fim, request.rendered
    cut = rendered.truncation
    snippets = [s for s in fim.context if s.text][: rendered.context_kept]
    return {
        "input_prefix": fim.prefix[cut.prefix_chars : len(fim.prefix) - len(rendered.lead)],
        "input_suffix": fim.suffix[: len(fim.suffix) - cut.suffix_chars],
        "input_extra": [{"filename": s.path, "text": s.text} for s in reversed(snippets)],
    }


def decode_message(payload: dict[str, Any]) -> Delta:
    """One /infill SSE message: `content` (the next piece; empty on the last one in stream mode) and `stop`;
    the last one (`stop: true`) says why in `stop_type` (or older servers' stopped_* flags) and counts tokens in
    `tokens_evaluated` (prompt) and `tokens_predicted`."""
    if "error" in payload:
        raise ServerError(error_message(payload) or str(payload["error"]))
    content = payload.get("content")
    if not isinstance(content, str):
        raise BadAnswer(f"an /infill message without a `content` string: {str(payload)[:200]}")
    if not payload.get("stop"):
        return Delta(content)
    kind = payload.get("stop_type")
    finish = STOP_TYPES.get(kind) if isinstance(kind, str) else None
    if finish is None:
        finish = next((reason for flag, reason in LEGACY_STOP_FLAGS if payload.get(flag)), "end")
    return Delta(content, finish, as_int(payload.get("tokens_evaluated")), as_int(payload.get("tokens_predicted")))
