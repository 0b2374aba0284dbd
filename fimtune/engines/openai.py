"""The OpenAI-compatible completions engine: POST /v1/completions, streamed (vLLM, LM Studio, llama.cpp's /v1)."""

from __future__ import annotations

import threading
from typing import Any

from fimtune.engines.base import Completion, EngineRequest, EngineSettings, StopReason
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

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"  # `vllm serve`'s default port
MAX_SERVER_STOPS = 4  # the OpenAI API takes at most 4 stop strings; fimtune applies the rest itself


class OpenAIEngine:
    """Sends fimtune's rendered FIM prompt as `prompt` (vLLM refuses `suffix`, and the template must be the one
    the adapter was trained with), streams the answer over SSE and stops at every stop string: the first four
    are sent to the server, all of them are applied to the text as it arrives.

    `model` is the served name: with `vllm serve BASE --enable-lora --lora-modules NAME=RUN`, NAME selects the
    adapter and BASE the plain base model; empty leaves `model` out (vLLM then uses its only model).
    `skip_special_tokens: false` is sent so that a sentinel the model emits (`<|file_sep|>`) stays in the text
    and ends the completion instead of vanishing; `extra` fields override any of this.
    """

    name = "openai"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.http = HttpStream(
            "openai",
            settings,
            DEFAULT_ENDPOINT,
            not_found_hint=(
                f"Set model to a name the server lists at GET {_models_url(settings, DEFAULT_ENDPOINT)} "
                "(with vLLM --enable-lora, the NAME given in --lora-modules NAME=PATH)"
            ),
        )
        # Accept the base URL with or without the /v1 that OpenAI client libraries expect.
        self.path = "/completions" if self.http.endpoint.endswith("/v1") else "/v1/completions"

    def complete(self, request: EngineRequest, cancel: threading.Event | None = None) -> Completion:
        stops = tuple(dict.fromkeys(s for s in request.stop if s))
        body: dict[str, Any] = {
            # Token ids where the text spells a template token (as a server would read it): the ids training saw.
            "prompt": list(request.prompt_ids) if request.prompt_ids is not None else request.rendered.prompt,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stop": list(stops[:MAX_SERVER_STOPS]),
            "stream": True,
            "stream_options": {"include_usage": True},
            "skip_special_tokens": False,
        }
        if self.settings.model:
            body["model"] = self.settings.model
        body = merge_extra(body, self.settings.extra)
        return self.http.post(self.path, body, request, sse_payloads, decode_chunk, cancel)

    def check(self) -> None:
        self.http.check()

    def close(self) -> None:
        self.http.close()


def _models_url(settings: EngineSettings, default: str) -> str:
    base = (settings.endpoint or default).rstrip("/")
    return base + ("/models" if base.endswith("/v1") else "/v1/models")


def decode_chunk(payload: dict[str, Any]) -> Delta:
    """One `text_completion` chunk: choices[0].text, and finish_reason "stop" (with vLLM's `stop_reason`, the
    matched stop string or token; absent or null for the end token) or "length" on the last one; `usage` on the
    extra final chunk that `stream_options.include_usage` asks for (its `choices` is empty)."""
    if "error" in payload:
        raise ServerError(error_message(payload) or str(payload["error"]))
    choices = payload.get("choices")
    if not isinstance(choices, list):
        raise BadAnswer(f"a completion chunk without `choices`: {str(payload)[:200]}")
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    text = ""
    finish: StopReason | None = None
    if choices:
        choice = choices[0]
        text = str(choice.get("text") or "")
        reason = choice.get("finish_reason")
        if reason == "length":
            finish = "length"
        elif reason is not None:
            finish = "stop" if choice.get("stop_reason") is not None else "end"
    return Delta(text, finish, as_int(usage.get("prompt_tokens")), as_int(usage.get("completion_tokens")))
