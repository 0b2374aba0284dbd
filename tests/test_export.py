"""`fimtune export`: the Ollama Modelfile and the vLLM command line, field by field against the documentation of
each (Ollama and vLLM do not run here), and the GGUF of a tuned run (adapter merged) served by a real llama.cpp."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fimtune.export.run import VLLM_LORA_RANKS, export, ollama_modelfile, resolve_source, vllm_commands, vllm_lora_rank
from fimtune.fim_format import stop_strings
from tests.conftest import needs_llama_build


def test_vllm_command_serves_the_adapter_beside_its_base(tiny_run: Path, tmp_path: Path) -> None:
    # https://docs.vllm.ai/en/latest/features/lora.html: `vllm serve BASE --enable-lora --lora-modules
    # NAME=PATH`; --max-lora-rank must hold the adapter's rank and is one of vLLM's allowed values
    # (https://docs.vllm.ai/en/latest/configuration/engine_args.html#-max-lora-rank).
    src = resolve_source(str(tiny_run))
    serve, client = vllm_commands(src, "team")
    assert serve[:3] == ["vllm", "serve", str(src.base.resolve())]  # a built-in base: its folder, not a hub id
    assert serve[serve.index("--lora-modules") + 1] == f"team={tiny_run.resolve()}"
    assert "--enable-lora" in serve
    rank = json.loads((tiny_run / "adapter_config.json").read_text())["r"]
    assert int(serve[serve.index("--max-lora-rank") + 1]) == vllm_lora_rank(rank) >= rank
    assert int(serve[serve.index("--max-model-len") + 1]) == src.spec.budgets.max_tokens
    # fimtune serve through it: the openai engine, the served adapter's name, the run (its template and budgets)
    assert client[:5] == ["fimtune", "serve", "--engine", "openai", "--endpoint"]
    assert client[client.index("--model") + 1] == "team"
    assert client[client.index("--run") + 1] == str(tiny_run.resolve())
    readme = export(str(tiny_run), "vllm", tmp_path / "vllm", name="team", say=lambda _: None).read_text()
    assert shlex.join(serve) in readme and shlex.join(client) in readme


def test_vllm_lora_ranks() -> None:
    assert [vllm_lora_rank(r) for r in (1, 2, 8, 9, 16, 64, 200)] == [1, 8, 8, 16, 16, 64, 256]
    assert tuple(sorted(VLLM_LORA_RANKS)) == VLLM_LORA_RANKS


def test_ollama_modelfile_has_the_raw_template_and_every_stop(tiny_run: Path) -> None:
    # https://github.com/ollama/ollama/blob/main/docs/modelfile.md: FROM a GGUF file relative to the Modelfile;
    # TEMPLATE in Go template syntax with .Prompt (and .Suffix for fill-in-the-middle requests); one
    # `PARAMETER stop "..."` line per stop sequence; PARAMETER temperature and num_ctx.
    src = resolve_source(str(tiny_run))
    text = ollama_modelfile(src, "model-f16.gguf")
    lines = text.splitlines()
    assert "FROM ./model-f16.gguf" in lines
    t = src.spec.template
    (template,) = [line for line in lines if line.startswith("TEMPLATE ")]
    assert template == (
        'TEMPLATE """{{- if .Suffix }}'
        f"{t.prefix}{{{{ .Prompt }}}}{t.suffix}{{{{ .Suffix }}}}{t.middle}"
        '{{- else }}{{ .Prompt }}{{- end }}"""'
    )
    stops = [json.loads(line.removeprefix("PARAMETER stop ")) for line in lines if line.startswith("PARAMETER stop ")]
    assert stops == list(stop_strings(t))
    assert "PARAMETER temperature 0" in lines
    assert f"PARAMETER num_ctx {src.spec.budgets.max_tokens}" in lines


def test_a_folder_that_is_neither_a_run_nor_a_model_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fimtune", "export", str(tmp_path), "--to", "vllm"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("fimtune export: error: ") and str(tmp_path) in line


def test_a_bad_quant_names_the_flag(tiny_run: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fimtune", "export", str(tiny_run), "--quant", "q4"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "fimtune export: error: --quant: must be one of f16, q8_0, f32, not 'q4'"


@pytest.fixture(scope="module")
def nano_run(fimtune_cache: Path, tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 steps of LoRA on `nano` with a large learning rate: a tuned run whose tokenizer llama.cpp can load."""
    from tests.conftest import short_run

    return short_run("nano", tiny_corpus, tmp_path_factory.mktemp("nano-run") / "run")


def test_a_bytes_only_tokenizer_is_refused_before_any_conversion(tiny_run: Path, tmp_path: Path) -> None:
    from fimtune.export.run import ExportError

    with pytest.raises(ExportError, match="BPE without merges"):
        export(str(tiny_run), "gguf", tmp_path, say=lambda _: None)


@needs_llama_build
def test_a_tuned_run_exported_to_gguf_completes_as_the_local_engine(nano_run: Path, tmp_path: Path) -> None:
    from fimtune.engines.base import EngineSettings, make_engine
    from fimtune.export.llamacpp import LlamaServer, build_server
    from tests.conftest import user_cache
    from tests.cursors import cursors

    with user_cache():
        exe = build_server(say=print)
        readme = export(str(nano_run), "ollama", tmp_path / "ollama", quant="f32", name="team", say=print)
    folder = readme.parent
    assert (folder / "Modelfile").is_file() and "ollama create team -f Modelfile" in readme.read_text()
    server = LlamaServer(exe, folder / "model-f32.gguf")
    try:
        local = make_engine(EngineSettings(run=str(nano_run), device="cpu", dtype="fp32"))
        remote = make_engine(EngineSettings(engine="openai", endpoint=server.url, run=str(nano_run)))
        spec = local.prompt_spec()  # type: ignore[attr-defined]
        reqs = [spec.request(c, max_tokens=12) for c in cursors(12, seed=1)]
        same = sum(local.complete(r).text == remote.complete(r).text for r in reqs)
        assert same >= 9, same  # the merged adapter is in the GGUF: the tuned model, not its base
        base = make_engine(EngineSettings(base_model="nano", device="cpu", dtype="fp32"))
        assert sum(base.complete(r).text == remote.complete(r).text for r in reqs) < same
    finally:
        server.close()


def test_a_family_the_converter_does_not_take_is_named_with_the_way_out(tmp_path: Path) -> None:
    """No hand-kept list of families: llama.cpp's converter decides, and its refusal becomes one line."""
    import shutil

    from fimtune.export.run import ExportError
    from fimtune.models import resolve_builtin
    from tests.conftest import user_cache

    model = tmp_path / "foo-model"
    shutil.copytree(resolve_builtin("nano"), model)
    config = json.loads((model / "config.json").read_text())
    config |= {"architectures": ["FooForCausalLM"], "model_type": "foo"}
    (model / "config.json").write_text(json.dumps(config))
    with user_cache(), pytest.raises(ExportError) as err:
        export(str(model), "gguf", tmp_path / "out", say=lambda _: None)
    message = str(err.value)
    assert "does not take model type 'foo'" in message and "--to vllm" in message and "\n" not in message


@pytest.mark.parametrize("name", ["fimtune", "fimtune-spm", "codellama-spm"])
def test_the_gguf_readme_offers_infill_only_where_it_lays_out_the_template(name: str) -> None:
    from fimtune.export.run import _gguf_readme
    from fimtune.fim_format import PSM, get_template

    t = get_template(name)
    text = _gguf_readme("model-f16.gguf", "--run RUN", 1024, t)
    # --special: the template's special tokens reach the text, where fimtune's stop strings end a generation
    assert "llama-server -m model-f16.gguf --port 8080 -c 1024 --special" in text
    assert "fimtune serve --engine openai --endpoint http://127.0.0.1:8080 --run RUN" in text
    assert ("--engine llamacpp" in text) == (t.layout == PSM)
