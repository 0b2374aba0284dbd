"""`fimtune export`: a run (or a base model) as a GGUF for llama.cpp, an Ollama Modelfile, or vLLM's command line,
each with the exact FIM template, stop strings and budgets the model was tuned with, and a README."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fimtune.config import ConfigError, check, setting
from fimtune.export.llamacpp import SERVE_FLAGS
from fimtune.fim_format import PSM, FimTemplate, stop_strings
from fimtune.prompting import PromptSpec, resolve_prompt

TARGETS = ("gguf", "ollama", "vllm")
QUANTS = ("f16", "q8_0", "f32")


@dataclass
class ExportConfig:
    """What `fimtune export` writes (every setting is a flag)."""

    to: str = setting("gguf", help="serving stack", flag=True, choices=TARGETS)
    out: str = setting("", help="folder for the export (default: RUN/export-TO)", flag=True)
    quant: str = setting(
        "f16", help="GGUF weights: f16, q8_0 (half the size) or f32 (exact)", flag=True, choices=QUANTS
    )
    name: str = setting("", help="model name for Ollama and vLLM (default: the run folder's name)", flag=True)


# vLLM's --max-lora-rank takes one of these (vllm/config/lora.py MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The template's tokens that llama.cpp keeps as FIM metadata (gguf.Keys.Tokenizer names).
FIM_KEYS = {"prefix": "FIM_PRE_ID", "suffix": "FIM_SUF_ID", "middle": "FIM_MID_ID", "pad": "FIM_PAD_ID"}
FIM_KEYS_REPO = {"repo_name": "FIM_REP_ID", "file_sep": "FIM_SEP_ID"}


class ExportError(Exception):
    """The export cannot be made; the message names the run, the family or the step and what to do."""


@dataclass
class Source:
    """What is exported: the base model folder, the adapter (None for a base model) and the prompt spec."""

    label: str  # what the user gave: the run folder or the base model name
    base: Path
    base_name: str  # the base as the run names it (a hub id for vLLM)
    adapter: Path | None
    merged: Path | None  # RUN/merged when `fimtune train --merge` wrote it
    spec: PromptSpec
    model_type: str
    lora_rank: int = 0


def resolve_source(model: str) -> Source:
    """A `fimtune train` run folder (its fimtune.json) or a base model (`nano`, a folder, a hub id)."""
    from fimtune import models
    from fimtune.run_meta import RUN_META, RunMetaError

    folder = Path(model).expanduser()
    try:
        if (folder / RUN_META).is_file():
            spec = resolve_prompt(run=folder)
            meta = spec.meta
            assert meta is not None
            base = models.resolve_base_model(meta.base_model)
            rank = json.loads((folder / meta.adapter / "adapter_config.json").read_text(encoding="utf-8"))["r"]
            merged = folder / meta.merged if meta.merged else None
            return Source(model, base, meta.base_model, folder / meta.adapter, merged, spec, meta.model_type, rank)
        base = models.resolve_base_model(model)
        spec = resolve_prompt(base_model=base)
        return Source(model, base, model, None, None, spec, models.model_type_of(base))
    except (RunMetaError, models.ModelError, OSError, KeyError, ValueError) as e:
        raise ExportError(f"{model}: {e}") from None


def fim_token_ids(template: FimTemplate, tokenizer_json: Path) -> dict[str, int]:
    """gguf.Keys.Tokenizer name -> token id for each FIM token of the template the tokenizer has."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    ids: dict[str, int] = {}
    for attr, key in {**FIM_KEYS, **FIM_KEYS_REPO}.items():
        token = getattr(template, attr)
        if token and (token_id := tok.token_to_id(token)) is not None:
            ids[key] = token_id
    return ids


def export_gguf(src: Source, out: Path, quant: str, say: Callable[[str], None]) -> tuple[Path, dict[str, int]]:
    """Merge the adapter (unless the run has RUN/merged) and convert with llama.cpp's converter; the GGUF and
    the FIM token ids written into it."""
    from fimtune.export import llamacpp

    _check_tokenizer(src)
    llama_src = llamacpp.sources(say)
    gguf = out / f"model-{quant}.gguf"
    with tempfile.TemporaryDirectory(prefix="fimtune-merge-", dir=out) as tmp:
        model_dir = src.merged or src.base
        if src.adapter is not None and src.merged is None:
            from fimtune import models

            say(f"merging the adapter of {src.label} into {src.base_name}")
            model_dir = models.merge_adapter(src.base, src.adapter, Path(tmp), models.load_tokenizer(src.adapter))
        ids = fim_token_ids(src.spec.template, model_dir / "tokenizer.json")
        say(f"converting {model_dir} to {gguf.name} with llama.cpp's convert_hf_to_gguf.py")
        cmd = [sys.executable, "-m", "fimtune.export.convert_gguf", "--llama-cpp", str(llama_src)]
        cmd += ["--model", str(model_dir), "--out", str(gguf), "--outtype", quant, "--fim-ids", json.dumps(ids)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not gguf.is_file():
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()] or ["no output"]
        if any("not supported" in line for line in lines):  # the converter decides which families it takes
            raise ExportError(
                f"{src.label}: llama.cpp's converter does not take model type {src.model_type!r} "
                f"({lines[-1].strip()[:200]}); serve it with vLLM instead: fimtune export {src.label} --to vllm"
            )
        raise ExportError(f"llama.cpp's converter failed on {src.label} ({src.model_type}): {lines[-1][:300]}")
    return gguf, ids


def _check_tokenizer(src: Source) -> None:
    """llama.cpp loads a BPE vocabulary only with its merges; a bytes-only one (the `tiny` test model) has none."""
    try:
        data = json.loads(_tokenizer_of(src).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # a SentencePiece model: the converter reads tokenizer.model itself
    model = data.get("model") or {}
    if model.get("type") == "BPE" and not model.get("merges"):
        raise ExportError(
            f"{src.label}: its tokenizer is a BPE without merges (bytes only, like `tiny`'s), which llama.cpp cannot "
            "load; export a model with a trained tokenizer (nano, or a hub model)"
        )


def ollama_modelfile(src: Source, gguf_name: str) -> str:
    """A Modelfile (https://github.com/ollama/ollama/blob/main/docs/modelfile.md): FROM the GGUF, a TEMPLATE that
    passes fimtune's raw prompt through (and lays out the template's own FIM tokens for clients that send a
    `suffix`), a stop for every stop string, greedy decoding and the run's context length."""
    t = src.spec.template
    lines = [f"# fimtune export of {src.label}: template {t.name}", f"FROM ./{gguf_name}"]
    if t.middle is not None and t.layout == PSM and t.bos is None:
        fim = f"{t.prefix}{{{{ .Prompt }}}}{t.suffix}{{{{ .Suffix }}}}{t.middle}"
        body = f"{{{{- if .Suffix }}}}{fim}{{{{- else }}}}{{{{ .Prompt }}}}{{{{- end }}}}"
    else:
        body = "{{ .Prompt }}"
    lines.append(f'TEMPLATE """{body}"""')
    for stop in stop_strings(t):
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    lines += ["PARAMETER temperature 0", f"PARAMETER num_ctx {src.spec.budgets.max_tokens}"]
    return "\n".join(lines) + "\n"


def vllm_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ExportError(f"LoRA rank {rank} is above the largest vLLM serves ({VLLM_LORA_RANKS[-1]})")


def vllm_commands(src: Source, name: str, port: int = 8000) -> tuple[list[str], list[str]]:
    """`vllm serve` (https://docs.vllm.ai/en/latest/features/lora.html) and the matching `fimtune serve`."""
    max_len = src.spec.budgets.max_tokens
    serve = ["vllm", "serve", _served_base(src), "--port", str(port), "--max-model-len", str(max_len)]
    if src.adapter is not None:
        adapter = str(src.adapter.resolve())
        serve += ["--enable-lora", "--lora-modules", f"{name}={adapter}", "--max-lora-rank"]
        serve.append(str(vllm_lora_rank(src.lora_rank)))
    client = ["fimtune", "serve", "--engine", "openai", "--endpoint", f"http://127.0.0.1:{port}"]
    client += ["--model", name if src.adapter is not None else _served_base(src), *_model_flags(src)]
    return serve, client


def _model_flags(src: Source) -> list[str]:
    """How `fimtune serve` and `fimtune eval` name the exported model, so they budget prompts with its tokenizer:
    the run folder, or the base model (a built-in name, else its folder)."""
    if src.adapter is not None:
        return ["--run", str(Path(src.label).expanduser().resolve())]
    builtin = src.label in _builtin_names()
    return ["--base-model", src.label if builtin else str(Path(src.label).expanduser().resolve())]


def _served_base(src: Source) -> str:
    """The base as vLLM loads it: a hub id as given, else (a built-in model, a local folder) its folder."""
    local = src.base_name in _builtin_names() or Path(src.base_name).expanduser().exists()
    return str(src.base.resolve()) if local else src.base_name


def _builtin_names() -> tuple[str, ...]:
    from fimtune.models import BUILTIN_MODELS, TINY

    return (*BUILTIN_MODELS, TINY)


def _join(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def export(
    model: str, to: str, out: Path, quant: str = "f16", name: str = "", say: Callable[[str], None] = print
) -> Path:
    """Write the export of `model` (a run folder or a base model) for `to` into `out`; returns its README."""
    try:
        check(ExportConfig(to=to, quant=quant, name=name), flags=True)
    except ConfigError as e:
        raise ExportError(str(e)) from None
    src = resolve_source(model)
    name = name or Path(model).name or "fimtune"
    out.mkdir(parents=True, exist_ok=True)
    t = src.spec.template
    run_flag = _join(_model_flags(src))
    info: dict[str, Any] = {
        "source": src.label,
        "template": t.name,
        "stop": list(stop_strings(t)),
        "max_tokens": src.spec.budgets.max_tokens,
    }
    if to == "vllm":
        serve, client = vllm_commands(src, name)
        text = _vllm_readme(src, serve, client)
        info |= {"vllm_serve": serve, "fimtune_serve": client}
    else:
        gguf, ids = export_gguf(src, out, quant, say)
        info |= {"gguf": gguf.name, "fim_token_ids": ids}
        if to == "ollama":
            (out / "Modelfile").write_text(ollama_modelfile(src, gguf.name), encoding="utf-8")
            text = _ollama_readme(name, run_flag)
        else:
            text = _gguf_readme(gguf.name, run_flag, src.spec.budgets.max_tokens, t)
    (out / "export.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    readme = out / "README.md"
    readme.write_text(f"# {name}: fimtune export for {to}\n\nFrom `{src.label}`, template `{t.name}`.\n\n{text}")
    return readme


def _tokenizer_of(src: Source) -> Path:
    folder = src.adapter if src.adapter is not None and (src.adapter / "tokenizer.json").is_file() else src.base
    return folder / "tokenizer.json"


def _gguf_readme(gguf: str, run_flag: str, ctx: int, t: FimTemplate) -> str:
    serve = f"""Serve it with llama.cpp's server (`--special` writes the template's special tokens into the text, so
that the stop strings fimtune sends end a generation at any of them, as fimtune's own engine does):

```bash
llama-server -m {gguf} --port 8080 -c {ctx} {" ".join(SERVE_FLAGS)}
```

"""
    if t.layout == PSM:
        clients = f"""The GGUF carries the template's FIM tokens, so `/infill` lays out the same template. Complete
in the editor through it, with the prompt fimtune renders itself (byte for byte what training showed the model)
or through llama.cpp's own `/infill` layout:

```bash
fimtune serve --engine openai --endpoint http://127.0.0.1:8080 {run_flag}
fimtune serve --engine llamacpp --endpoint http://127.0.0.1:8080 {run_flag}
```
"""
    else:
        clients = f"""Template `{t.name}` puts the suffix first, which llama.cpp's `/infill` does not lay out, so
complete in the editor with the prompt fimtune renders itself (byte for byte what training showed the model),
sent to `/v1/completions`:

```bash
fimtune serve --engine openai --endpoint http://127.0.0.1:8080 {run_flag}
```
"""
    return f"""{serve}{clients}
Score it on held-out code the same way: `fimtune eval --corpus CORPUS --engine openai --endpoint
http://127.0.0.1:8080 {run_flag}`.
"""


def _ollama_readme(name: str, run_flag: str) -> str:
    return f"""Create the Ollama model from this folder (the Modelfile points at the GGUF beside it) and serve it:

```bash
ollama create {name} -f Modelfile
```

Complete in the editor through it (fimtune sends its own raw prompt, so the layout is the one training used):

```bash
fimtune serve --engine ollama --endpoint http://127.0.0.1:11434 --model {name} {run_flag}
```

Score it: `fimtune eval --corpus CORPUS --engine ollama --endpoint http://127.0.0.1:11434 --model {name}
{run_flag}`.
"""


def _vllm_readme(src: Source, serve: list[str], client: list[str]) -> str:
    adapter = "the adapter is served beside its base with LoRA, no merge needed" if src.adapter else "a base model"
    return f"""Serve it with vLLM ({adapter}):

```bash
{_join(serve)}
```

Complete in the editor through it (fimtune renders the prompt; vLLM's `/v1/completions` gets it as text):

```bash
{_join(client)}
```

Score it: `fimtune eval --corpus CORPUS {_join(client[2:])}`.
"""
