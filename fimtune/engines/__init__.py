"""Completion engines: one Protocol, a local transformers engine and HTTP engines (vLLM, llama.cpp, Ollama)."""

from fimtune.engines.base import (
    ENGINES,
    Completion,
    Engine,
    EngineError,
    EngineRequest,
    EngineSettings,
    make_engine,
)

__all__ = ["ENGINES", "Completion", "Engine", "EngineError", "EngineRequest", "EngineSettings", "make_engine"]
