"""Server settings: typed dataclasses parsed from camelCase client options; bad values fall back with a message."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from fimtune.config import bad_value, rule_of, setting
from fimtune.engines.base import ENGINES, PROMPT_CACHE, PROMPT_LOOKUP, EngineSettings
from fimtune.fim_format import TEMPLATES
from fimtune.models import DEVICE_RULE, DTYPES, default_base_model

LOG_LEVELS = ("error", "warning", "info", "debug")


@dataclass(frozen=True)
class ContextSettings:
    enabled: bool = setting(True, help="attach cross-file context from the workspace")
    max_chars: int = setting(
        4000, help="context characters; overrides the run's context budget only when set", at_least=1, at_most=200_000
    )


@dataclass(frozen=True)
class TelemetrySettings:
    path: str = setting("", help="a local JSONL file of accepted and rejected suggestions; empty: no telemetry")
    include_text: bool = setting(False, help="also record the suggested text")


@dataclass(frozen=True)
class FixedSettings:
    text: str = setting("", help="engine fixed: the completion it gives")
    delay_ms: int = setting(0, help="engine fixed: how long it thinks", at_least=0, at_most=600_000)
    error: str = setting("", help="engine fixed: fail every request with this message")


@dataclass(frozen=True)
class Settings:
    """Everything a client can set (api_server.md), in camelCase there (`maxTokens`, `context.maxChars`); the
    fields marked `flag` are also `fimtune serve` flags. `given` holds the dotted camelCase keys the client or the
    command line set explicitly, so a run folder's fimtune.json still decides what the user left alone."""

    enabled: bool = setting(True, help="offer completions at all")
    engine: str = setting(
        "local",
        help="local (transformers), openai (vLLM), llamacpp, ollama or fixed",
        flag=True,
        choices=tuple(ENGINES),
    )
    endpoint: str = setting("", help="HTTP engines: base URL, e.g. http://127.0.0.1:8000", flag=True)
    model: str = setting("", help="HTTP engines: model (or LoRA adapter) name", flag=True)
    api_key: str = setting("", help="HTTP engines: bearer token")
    run: str = setting(
        "", help="a `fimtune train` run folder (its fimtune.json decides template and budgets)", flag=True
    )
    base_model: str = setting(
        help="local engine without a run: a folder, hub id, or a built-in model: `nano` (default when installed), "
        "`pico`, `tiny` (random weights)",
        factory=default_base_model,
        flag=True,
    )
    template: str = setting(
        "auto",
        help="FIM template of the served model (HTTP engines without --run)",
        flag=True,
        choices=("auto", *TEMPLATES),
        metavar="NAME",
    )
    device: str = setting("auto", help="local engine: auto, cpu, cuda, cuda:N or mps", flag=True, **DEVICE_RULE)
    dtype: str = setting(
        "auto", help="local engine: auto is bf16 where the device has bf16 matrix support", flag=True, choices=DTYPES
    )
    prompt_lookup: int = setting(
        PROMPT_LOOKUP,
        help="local engine: draft up to N tokens from the prompt's own text and check them in one pass (prompt "
        "lookup decoding; 0: off)",
        flag=True,
        zero="off",
        at_least=0,
        at_most=64,
    )
    prompt_cache: int = setting(
        PROMPT_CACHE,
        help="local engine: keep the keys and values of the last N prompts, so that a prompt starting like one of "
        "them is computed from where they differ (0: off)",
        flag=True,
        zero="off",
        at_least=0,
        at_most=64,
    )
    max_tokens: int = setting(64, help="tokens per completion", flag=True, at_least=1, at_most=4096)
    debounce_ms: int = setting(75, help="wait this long after the last keystroke", at_least=0, at_most=5000)
    timeout_ms: int = setting(
        5000, help="give up on a completion after this long", flag=True, at_least=50, at_most=600_000
    )
    context: ContextSettings = field(default_factory=ContextSettings)
    languages: dict[str, bool] = setting(help="languageId -> enabled; `*` for the rest", factory=lambda: {"*": True})
    log_level: str = setting("info", help="what the server logs", flag=True, choices=LOG_LEVELS)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    fixed: FixedSettings = field(default_factory=FixedSettings)
    given: frozenset[str] = frozenset()

    def language_enabled(self, language_id: str) -> bool:
        return self.languages.get(language_id, self.languages.get("*", True))

    def engine_settings(self) -> EngineSettings:
        """How to build the engine. A run's own base model wins unless the client named one."""
        base = self.base_model if (not self.run or "baseModel" in self.given) else ""
        return EngineSettings(
            engine=self.engine,
            endpoint=self.endpoint,
            model=self.model,
            api_key=self.api_key,
            timeout_s=self.timeout_ms / 1000.0,
            run=self.run,
            base_model=base,
            device=self.device,
            dtype=self.dtype,
            prompt_lookup=self.prompt_lookup,
            prompt_cache=self.prompt_cache,
            fixed_text=self.fixed.text,
            fixed_delay_s=self.fixed.delay_ms / 1000.0,
            fixed_error=self.fixed.error,
        )

    def model_label(self) -> str:
        """What the status shows as the model: the run folder, the HTTP model name, or the base model."""
        if self.run:
            return self.run
        if self.engine in ("openai", "llamacpp", "ollama"):
            return self.model or self.endpoint
        if self.engine == "fixed":
            return "fixed"
        return self.base_model


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _type_ok(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def _type_name(default: Any) -> str:
    return {bool: "true or false", int: "an integer", str: "a string"}.get(type(default), type(default).__name__)


def _parse_into(obj: Any, data: dict[str, Any], prefix: str, warnings: list[str], given: set[str]) -> Any:
    """`obj` with the values of `data` (camelCase keys) that are valid; a warning for each one that is not."""
    by_key = {camel(f.name): f for f in fields(obj) if f.name != "given"}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        dotted = prefix + key
        f = by_key.get(key)
        if f is None:
            warnings.append(f"fimtune: unknown setting {dotted!r} ignored; known: {', '.join(sorted(by_key))}")
            continue
        current = getattr(obj, f.name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                warnings.append(f"fimtune: setting {dotted!r} must be an object; using the default")
                continue
            changes[f.name] = _parse_into(current, value, dotted + ".", warnings, given)
            continue
        if isinstance(current, dict):  # languages: languageId -> enabled, replaced as a whole
            if not isinstance(value, dict) or not all(isinstance(v, bool) for v in value.values()):
                warnings.append(f"fimtune: setting {dotted!r} must map language ids to true/false; using {current!r}")
                continue
            changes[f.name] = {"*": True, **value}
            given.add(dotted)
            continue
        if not _type_ok(value, current):
            warnings.append(
                f"fimtune: setting {dotted!r} must be {_type_name(current)}, not {value!r}; using {current!r}"
            )
            continue
        problem = rule_of(f).problem(value)
        if problem is not None:
            warnings.append(f"fimtune: setting {bad_value(repr(dotted), problem, value)}; using {current!r}")
            continue
        changes[f.name] = value
        given.add(dotted)
    return replace(obj, **changes)


def parse_settings(data: Any, base: Settings | None = None) -> tuple[Settings, list[str]]:
    """`base` (the command line's defaults, or the current settings) updated with the client's options.

    Keys the client leaves out keep the value of `base`; unknown keys and bad values keep it too and give a
    warning that names the setting. Never raises."""
    base = base or Settings()
    warnings: list[str] = []
    if data is None:
        return base, warnings
    if not isinstance(data, dict):
        return base, [f"fimtune: settings must be a JSON object, not {type(data).__name__}; using the defaults"]
    given: set[str] = set(base.given)
    parsed = _parse_into(base, data, "", warnings, given)
    return replace(parsed, given=frozenset(given)), warnings


def settings_section(params_settings: Any) -> Any:
    """The fimtune part of `workspace/didChangeConfiguration` settings: `settings.fimtune`, or `settings`
    itself when it has no `fimtune` key."""
    if isinstance(params_settings, dict) and "fimtune" in params_settings:
        return params_settings["fimtune"]
    return params_settings
