"""Server settings: typed dataclasses parsed from camelCase client options; bad values fall back with a message."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from fimtune.engines.base import ENGINES, EngineSettings
from fimtune.fim_format import TEMPLATES
from fimtune.models import default_base_model

LOG_LEVELS = ("error", "warning", "info", "debug")
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True)
class ContextSettings:
    enabled: bool = True
    max_chars: int = 4000  # overrides the run's context budget only when the client sets it


@dataclass(frozen=True)
class TelemetrySettings:
    path: str = ""  # a local JSONL file; empty: no telemetry
    include_text: bool = False  # also record the suggested text


@dataclass(frozen=True)
class FixedSettings:
    text: str = ""
    delay_ms: int = 0
    error: str = ""


@dataclass(frozen=True)
class Settings:
    """Everything a client can set (api_server.md). `given` holds the dotted camelCase keys the client or the
    command line set explicitly, so a run folder's fimtune.json still decides what the user left alone."""

    enabled: bool = True
    engine: str = "local"
    endpoint: str = ""
    model: str = ""
    api_key: str = ""
    run: str = ""
    base_model: str = field(default_factory=default_base_model)  # `pico` when installed, else `tiny`
    template: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    max_tokens: int = 64
    debounce_ms: int = 75
    timeout_ms: int = 5000
    context: ContextSettings = field(default_factory=ContextSettings)
    languages: dict[str, bool] = field(default_factory=lambda: {"*": True})
    log_level: str = "info"
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


# Checks per dotted key: a predicate on the (already type-checked) value and what the message says it must be.
_CHECKS: dict[str, tuple[Any, str]] = {
    "engine": (lambda v: v in ENGINES, f"one of {', '.join(ENGINES)}"),
    "template": (lambda v: v == "auto" or v in TEMPLATES, f"auto or one of {', '.join(TEMPLATES)}"),
    "device": (lambda v: _DEVICE_RE.fullmatch(v) is not None, "auto, cpu, mps, cuda or cuda:N"),
    "dtype": (lambda v: v in ("auto", "fp32", "bf16"), "auto, fp32 or bf16"),
    "maxTokens": (lambda v: 1 <= v <= 4096, "an integer from 1 to 4096"),
    "debounceMs": (lambda v: 0 <= v <= 5000, "an integer from 0 to 5000"),
    "timeoutMs": (lambda v: 50 <= v <= 600_000, "an integer from 50 to 600000"),
    "context.maxChars": (lambda v: 1 <= v <= 200_000, "an integer from 1 to 200000"),
    "logLevel": (lambda v: v in LOG_LEVELS, f"one of {', '.join(LOG_LEVELS)}"),
    "fixed.delayMs": (lambda v: 0 <= v <= 600_000, "an integer from 0 to 600000"),
}


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
        check = _CHECKS.get(dotted)
        if check is not None and not check[0](value):
            warnings.append(f"fimtune: setting {dotted!r} must be {check[1]}, not {value!r}; using {current!r}")
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
