"""The Engine protocol and its request, result, settings and factory (shared by eval and the language server)."""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from fimtune.prompting import EngineRequest

# Engine name -> "module:factory"; factories take EngineSettings. Imported lazily so that a server talking to a
# remote engine never imports torch.
ENGINES: dict[str, str] = {
    "local": "fimtune.engines.local:LocalEngine",
    "openai": "fimtune.engines.openai:OpenAIEngine",
    "llamacpp": "fimtune.engines.llamacpp:LlamaCppEngine",
    "ollama": "fimtune.engines.ollama:OllamaEngine",
    "fixed": "fimtune.engines.fixed:FixedEngine",
}

StopReason = Literal["end", "stop", "length", "cancelled"]  # end token, stop string, token limit, cancelled


class EngineError(Exception):
    """An engine could not complete: names the engine, the endpoint or model, and what failed."""


# Prompt lookup decoding (transformers' assisted generation without a draft model): the local engine drafts up to
# this many next tokens by finding the last generated tokens earlier in the prompt and copying what followed them,
# then checks the whole draft in one forward pass and keeps the part the model agrees with. Code completion copies
# from its prefix and context a lot, and on a CPU a small model's forward pass costs about the same for one token
# as for seven, so each pass yields several tokens. In fp32 the output is the plain greedy one; under bf16 a
# near-tie can go the other way, as between fp32 and bf16 themselves (benchmarks/engine_dtype.py measures both).
PROMPT_LOOKUP = 6

# The local engine keeps the keys and values of its last few prompts (and what it generated after them): a new
# prompt that starts like one of them is computed from where they differ. In an editor, consecutive keystrokes on a
# line change the prompt only near its end (the suffix-first layout puts the prefix's end last), so most of the
# prompt's forward pass is saved. Entries cost memory: layers x 2 x key/value width x tokens per prompt (about
# 6 MB for nano's 1,000 tokens in bf16, a few hundred MB for a 7B model's 2,000). In fp32 the text is the one a
# fresh prompt gives; under bf16 a pass on top of cached keys rounds differently, so a near-tie can go the other way
# and an answer can depend on the prompts before it (benchmarks/lsp_latency.py counts the keystrokes answered alike
# with the cache on and off). `--prompt-cache 0 --prompt-lookup 0` is plain greedy decoding.
PROMPT_CACHE = 4


@dataclass(frozen=True, slots=True)
class Completion:
    """What an engine produced, before stop rules."""

    text: str  # the stop string or end token is not included
    stop_reason: StopReason
    seconds: float  # wall time of the call
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@runtime_checkable
class Engine(Protocol):
    """Completes rendered FIM requests. `complete` blocks; it may be called from a worker thread and must return
    promptly (stop_reason "cancelled", text so far) once `cancel` is set. Failures raise EngineError."""

    name: str

    def complete(self, request: EngineRequest, cancel: threading.Event | None = None) -> Completion: ...

    def close(self) -> None: ...


@dataclass
class EngineSettings:
    """How to reach or load a model. Unused fields are ignored by engines that do not need them."""

    engine: str = "local"
    endpoint: str = ""  # HTTP engines: base URL, e.g. http://127.0.0.1:8000 (vLLM), :8080 (llama.cpp), :11434 (Ollama)
    model: str = ""  # HTTP engines: model name (for vLLM with --enable-lora, the adapter's name)
    api_key: str = ""  # openai: bearer token, if the endpoint needs one
    timeout_s: float = 30.0  # HTTP: whole-request timeout
    connect_timeout_s: float = 3.0
    run: str = ""  # local: a `fimtune train` run folder (adapter + fimtune.json)
    base_model: str = ""  # local: a model folder, hub id or preset (`tiny`); from the run's fimtune.json if empty
    device: str = "auto"  # local: auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # local: auto (bf16 where torch reports bf16 matrix support on the device) | fp32 | bf16
    prompt_lookup: int = PROMPT_LOOKUP  # local: see PROMPT_LOOKUP; 0 turns it off
    prompt_cache: int = PROMPT_CACHE  # local: prompts whose keys and values are kept (see PROMPT_CACHE); 0: none
    fixed_text: str = ""  # fixed: the completion it returns (a deterministic engine for tests and wiring checks)
    fixed_delay_s: float = 0.0  # fixed: how long each call takes (cancellable)
    fixed_error: str = ""  # fixed: raise EngineError with this message instead of answering
    extra: dict[str, Any] = field(default_factory=dict)  # engine-specific request fields passed through


def make_engine(settings: EngineSettings) -> Engine:
    """Build the engine `settings.engine` names; its heavy imports happen here, not at fimtune import time."""
    target = ENGINES.get(settings.engine)
    if target is None:
        raise EngineError(f"unknown engine {settings.engine!r}; known: {', '.join(ENGINES)}")
    module, _, factory = target.partition(":")
    engine: Engine = getattr(importlib.import_module(module), factory)(settings)
    return engine
