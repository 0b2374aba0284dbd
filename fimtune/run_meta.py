"""fimtune.json: what a training run decided (base model, template, budgets, context), read back by eval and serve."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RUN_META = "fimtune.json"
# Version of the fimtune.json layout itself (not of the prompt format, which is `fim_format_version`).
RUN_META_VERSION = 1


class RunMetaError(Exception):
    """A run folder's fimtune.json is missing, unreadable, or from a version this fimtune does not know."""


@dataclass
class RunMeta:
    """The prompt choices a model was trained with; eval and serve must render prompts exactly the same way."""

    base_model: str  # as the user gave it: a path, a hub id, or a preset name such as `tiny`
    template: str  # fim_format template name
    fim_format_version: int
    budgets: dict[str, Any]  # fim_format.Budgets as a mapping
    context: dict[str, Any]  # the corpus's context settings (ContextConfig as a mapping)
    seq_len: int
    corpus: str = ""
    corpus_manifest_sha256: str = ""
    corpus_format_version: int = 0
    base_model_path: str = ""  # where the base was loaded from on the training machine
    model_type: str = ""
    adapter: str = "."  # PEFT adapter folder, relative to the run folder
    merged: str = ""  # merged model folder relative to the run folder, when --merge was given
    train: dict[str, Any] = field(default_factory=dict)  # the full TrainConfig
    fimtune_version: str = ""
    version: int = RUN_META_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = RUN_META) -> RunMeta:
        if not isinstance(data, dict):
            raise RunMetaError(f"{where}: expected a JSON object")
        version = data.get("version")
        if version != RUN_META_VERSION:
            raise RunMetaError(
                f"{where}: run metadata version {version!r} is not supported by this fimtune "
                f"(it reads version {RUN_META_VERSION}); use the fimtune release that trained it"
            )
        known = set(cls.__dataclass_fields__)
        missing = [
            k
            for k in ("base_model", "template", "fim_format_version", "budgets", "context", "seq_len")
            if k not in data
        ]
        if missing:
            raise RunMetaError(f"{where}: missing {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def check_format(self) -> None:
        """Refuse a prompt format version this fimtune cannot render."""
        from fimtune.fim_format import FORMAT_VERSION

        if self.fim_format_version != FORMAT_VERSION:
            raise RunMetaError(
                f"this run was trained with FIM prompt format version {self.fim_format_version}, but this fimtune "
                f"renders version {FORMAT_VERSION}; use the fimtune release that trained it, or train again"
            )


def write_run_meta(folder: str | Path, meta: RunMeta) -> Path:
    """Write <folder>/fimtune.json atomically."""
    path = Path(folder) / RUN_META
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_run_meta(folder: str | Path, *, check_format: bool = True) -> RunMeta:
    """Read <folder>/fimtune.json (folder may also be the file itself); errors name the file and say what to do."""
    p = Path(folder)
    path = p if p.is_file() else p / RUN_META
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunMetaError(f"{path} does not exist: {p} is not a run folder written by `fimtune train`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RunMetaError(f"{path} is not readable run metadata ({e})") from None
    meta = RunMeta.from_dict(data, str(path))
    if check_format:
        meta.check_format()
    return meta
