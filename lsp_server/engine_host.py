"""The server's engine and prompt spec: built off the event loop, swapped when settings change, with a status."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fimtune.config import ConfigError, ContextConfig, from_dict
from fimtune.engines.base import Engine, EngineError, EngineSettings, make_engine
from fimtune.fim_format import FimFormatError
from fimtune.models import ModelError
from fimtune.prompting import PromptSpec, resolve_prompt
from fimtune.run_meta import RunMetaError, read_run_meta
from lsp_server.settings import Settings

log = logging.getLogger("lsp_server.engine")

StatusCallback = Callable[[dict[str, str]], None]


@dataclass(frozen=True)
class Loaded:
    """A ready engine with the prompt spec requests are rendered with; `generation` changes with each build."""

    engine: Engine
    spec: PromptSpec
    generation: int


def context_config(settings: Settings) -> ContextConfig:
    """The context settings requests use: the run's fimtune.json (else the defaults), with the client's
    `context.maxChars` when it set one. Cheap: it does not load the engine."""
    cfg = ContextConfig()
    if settings.run:
        try:
            meta = read_run_meta(settings.run)
            if meta.context:
                cfg = from_dict(ContextConfig, meta.context, "fimtune.json context")
        except (RunMetaError, ConfigError, OSError) as e:
            log.debug("context settings from %s unavailable: %s", settings.run, e)
    if "context.maxChars" in settings.given:
        cfg = dataclasses.replace(cfg, max_chars=settings.context.max_chars)
    return cfg


def prompt_spec(engine: Engine, settings: Settings) -> PromptSpec:
    """How requests are rendered for this engine: the local engine knows its tokenizer; the others read the
    run folder's fimtune.json, or use the named template."""
    maker: Any = getattr(engine, "prompt_spec", None)
    base = settings.base_model if not settings.run and "baseModel" in settings.given else None
    try:
        if callable(maker):
            spec: PromptSpec = maker(settings.template)
        elif not settings.run and base is None and settings.template == "auto":
            if settings.engine != "fixed":
                raise EngineError(
                    f"{settings.engine} engine: set `template` to the served model's FIM template "
                    "(e.g. qwen2.5-coder), `baseModel` to the served model's folder, or `run` to the run folder "
                    "it was tuned in; `auto` needs one of them"
                )
            spec = resolve_prompt(template="fimtune")
        else:
            # A served base model the client named (its folder or a built-in name): its template and exact token
            # budgets from its tokenizer.json, as eval and the local engine count them.
            spec = resolve_prompt(run=settings.run or None, base_model=base, template=settings.template)
    except (FimFormatError, RunMetaError, ModelError) as e:
        raise EngineError(f"{settings.engine} engine: {e}") from None
    spec.context = dataclasses.replace(spec.context, max_chars=context_config(settings).max_chars)
    return spec


class EngineHost:
    """Holds the current engine. `configure` starts a build in a thread when the engine settings changed;
    until it is ready `current()` is None and `reason` says why. Thread-safe."""

    def __init__(self, on_status: StatusCallback) -> None:
        self._on_status = on_status
        self._lock = threading.Lock()
        self._loaded: Loaded | None = None
        self._key: tuple[EngineSettings, str, int] | None = None
        self._generation = 0
        self._settings: Settings | None = None  # of the loaded engine
        self.status: dict[str, str] = {"state": "loading", "engine": "", "model": "", "message": "starting"}

    def current(self) -> Loaded | None:
        return self._loaded

    @property
    def reason(self) -> str:
        return self.status["message"]

    def _set_status(self, state: str, settings: Settings, message: str) -> None:
        self.status = {"state": state, "engine": settings.engine, "model": settings.model_label(), "message": message}
        self._on_status(dict(self.status))

    def configure(self, settings: Settings) -> bool:
        """Rebuild the engine if what it depends on changed; True when a build started."""
        key = (settings.engine_settings(), settings.template, context_config(settings).max_chars)
        with self._lock:
            if key == self._key:
                return False
            self._key = key
            self._generation += 1
            generation = self._generation
        self._set_status("loading", settings, f"loading the {settings.engine} engine")
        threading.Thread(
            target=self._build, args=(settings, key[0], generation), name="fimtune-engine-load", daemon=True
        ).start()
        return True

    def _build(self, settings: Settings, engine_settings: EngineSettings, generation: int) -> None:
        engine: Engine | None = None
        try:
            engine = make_engine(engine_settings)
            spec = prompt_spec(engine, settings)
        except EngineError as e:
            self._failed(settings, generation, engine, str(e))
            return
        except Exception as e:  # an engine's own bug must not take the server down
            log.exception("building the %s engine failed", settings.engine)
            self._failed(settings, generation, engine, f"{settings.engine} engine: {type(e).__name__}: {e}")
            return
        with self._lock:
            if generation != self._generation:  # settings changed while loading: this one is stale
                stale: Engine | None = engine
                old = None
            else:
                stale = None
                old, self._loaded = self._loaded, Loaded(engine, spec, generation)
        if stale is not None:
            _close(stale)
            return
        if old is not None:
            _close(old.engine)
        self._settings = settings
        check = getattr(engine, "check", None)  # HTTP engines: is anything listening at the endpoint?
        try:
            if callable(check):
                check()
        except EngineError as e:
            log.error("%s", e)
            self._set_status("error", settings, str(e))  # loaded all the same: it is tried on each request
            return
        log.info("engine ready: %s, template %s", settings.engine, spec.template.name)
        self._set_status("ready", settings, f"{settings.engine} engine ready (template {spec.template.name})")

    def answered(self, generation: int, error: str | None) -> None:
        """A request to the loaded engine succeeded (error None) or failed: the status follows, so a server
        that went down shows `error` and one that came up shows `ready` again."""
        loaded, settings = self._loaded, self._settings
        if loaded is None or loaded.generation != generation or settings is None:
            return
        state = self.status["state"]
        if error is None and state == "error":
            self._set_status(
                "ready", settings, f"{settings.engine} engine ready (template {loaded.spec.template.name})"
            )
        elif error is not None and state == "ready" and "cannot connect" in error:
            self._set_status("error", settings, error)

    def _failed(self, settings: Settings, generation: int, engine: Engine | None, message: str) -> None:
        if engine is not None:
            _close(engine)
        with self._lock:
            if generation != self._generation:
                return
            old, self._loaded = self._loaded, None
        if old is not None:
            _close(old.engine)
        log.error("%s", message)
        self._set_status("error", settings, message)

    def close(self) -> None:
        with self._lock:
            old, self._loaded = self._loaded, None
            self._generation += 1
        if old is not None:
            _close(old.engine)


def _close(engine: Engine) -> None:
    try:
        engine.close()
    except Exception:
        log.exception("closing the %s engine failed", getattr(engine, "name", "?"))
