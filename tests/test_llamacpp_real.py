"""A real llama.cpp: `llama-server` built from the llama-cpp-python sdist's vendored sources, serving `nano`
exported by `fimtune export`, against fimtune's own local engine on the same prompts."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fimtune.engines.base import Engine, EngineError, EngineRequest, EngineSettings, make_engine
from fimtune.export.llamacpp import LlamaServer
from fimtune.fim_format import FimRequest
from tests.conftest import needs_llama_build, user_cache
from tests.cursors import cursors

REPO = Path(__file__).resolve().parent.parent
pytestmark = needs_llama_build


@pytest.fixture(scope="module")
def llama_server_exe() -> Path:
    from fimtune.export.llamacpp import build_server

    with user_cache():
        return build_server(say=print)


@pytest.fixture(scope="module")
def nano_gguf(tmp_path_factory: pytest.TempPathFactory, llama_server_exe: Path) -> Path:
    """nano exported in f32, so that llama.cpp and transformers differ only in their kernels."""
    from fimtune.export.run import export

    out = tmp_path_factory.mktemp("nano-gguf")
    with user_cache():
        export("nano", "gguf", out, "f32", say=print)
    return out / "model-f32.gguf"


@pytest.fixture(scope="module")
def server(llama_server_exe: Path, nano_gguf: Path) -> Iterator[LlamaServer]:
    s = LlamaServer(llama_server_exe, nano_gguf)
    yield s
    print(s.log_tail())  # shown with any failure of the module's tests
    s.close()


@pytest.fixture(scope="module")
def local() -> Engine:
    return make_engine(EngineSettings(engine="local", base_model="nano", device="cpu", dtype="fp32"))


def requests(local: Engine, n: int, max_tokens: int = 24, template: str = "auto") -> list[EngineRequest]:
    spec = local.prompt_spec(template)  # type: ignore[attr-defined]
    return [spec.request(c, max_tokens=max_tokens) for c in cursors(n)]


def test_the_gguf_keeps_the_templates_fim_tokens(nano_gguf: Path) -> None:
    import sys

    from fimtune.export.llamacpp import sources

    with user_cache():
        gguf_py = sources() / "gguf-py"
    sys.path.insert(0, str(gguf_py))
    try:
        import gguf

        fields = gguf.GGUFReader(str(nano_gguf)).fields
        meta = {k: fields[k].contents() for k in fields if k.startswith("tokenizer.ggml.fim_")}
    finally:
        sys.path.remove(str(gguf_py))
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(REPO / "fimtune" / "models" / "nano" / "tokenizer.json"))
    expected = {
        "pre": "<|fim_prefix|>",
        "suf": "<|fim_suffix|>",
        "mid": "<|fim_middle|>",
        "pad": "<|pad|>",
        "rep": "<|repo_name|>",
        "sep": "<|file_sep|>",
    }
    assert meta == {f"tokenizer.ggml.fim_{k}_token_id": tok.token_to_id(v) for k, v in expected.items()}


def _first_token_margin(local: Engine, req: EngineRequest, a: str, b: str) -> float:
    """Where the two greedy texts part: the local model's logit gap between its own token and the server's (the
    end token for a text that ended there)."""
    import torch

    from fimtune.fim_format import get_template, prompt_ids

    engine: Any = local
    tok = engine.fim_tokenizer
    end = tok.token_to_id(get_template(req.rendered.template).end)
    ids_a, ids_b = [*tok.encode(a), end], [*tok.encode(b), end]
    k = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y)
    prompt = prompt_ids(req.rendered.template, req.rendered, tok)
    with torch.no_grad():
        logits = engine.model(torch.tensor([prompt + ids_a[:k]])).logits[0, -1].float()
    return float(logits[ids_a[k]] - logits[ids_b[k]])


def test_openai_engine_through_llama_server_sees_the_training_tokens_and_completes_as_the_local_engine(
    server: LlamaServer, local: Engine
) -> None:
    remote = make_engine(EngineSettings(engine="openai", endpoint=server.url))
    remote.check()
    reqs = requests(local, 20)
    same, margins = 0, []
    for req in reqs:
        served = server.post("/tokenize", {"content": req.rendered.prompt, "add_special": False, "parse_special": True})
        engine: Any = local
        assert served["tokens"] == engine.tokenizer(req.rendered.prompt, add_special_tokens=False)["input_ids"]
        a, b = local.complete(req).text, remote.complete(req).text
        if a == b:
            same += 1
        else:
            margins.append(_first_token_margin(local, req, a, b))
    # Same token ids in; greedy outputs part only where the top two tokens were nearly tied (llama.cpp's f32
    # kernels add in another order than torch's). Measured: 18 of 20 identical, gaps under 0.2 logits.
    assert same >= 16, (same, margins)
    assert all(0 <= m < 0.5 for m in margins), margins


def test_a_prompt_spelling_template_tokens_reaches_the_server_as_the_training_ids(
    server: LlamaServer, local: Engine
) -> None:
    """A file of tokenizer code holds `<|fim_middle|>` and `<|endoftext|>` as text: llama-server would read that
    text as the tokens themselves, so the openai engine sends the ids training encodes (the characters)."""
    spec = local.prompt_spec()  # type: ignore[attr-defined]
    prefix = 'FIM = ("<|fim_prefix|>", "<|fim_middle|>")\nEND = "<|endoftext|>"\n\n\ndef sentinel(name):\n    return '
    req = spec.request(FimRequest("r", "tok.py", "python", prefix, "\n\nprint(sentinel(1))\n"), max_tokens=8)
    assert req.prompt_ids is not None
    as_text = server.post("/tokenize", {"content": req.rendered.prompt, "add_special": False, "parse_special": True})
    assert as_text["tokens"] != list(req.prompt_ids)  # what the text alone would have given the model
    remote = make_engine(EngineSettings(engine="openai", endpoint=server.url))
    done = remote.complete(req)
    assert done.prompt_tokens == len(req.prompt_ids)  # the server counted the ids it was sent
    assert done.text == local.complete(req).text


def test_infill_lays_out_llama_cpps_own_prompt_and_answers(server: LlamaServer, local: Engine) -> None:
    infill = make_engine(EngineSettings(engine="llamacpp", endpoint=server.url))
    with pytest.raises(EngineError, match=r"fimtune-spm puts the suffix first.*--engine openai"):
        infill.complete(requests(local, 1)[0])  # nano's own template: /infill cannot lay it out
    reqs = requests(local, 10, template="fimtune")  # the prefix-first order of the same tokens, which it can
    results = [infill.complete(req) for req in reqs]
    assert all(r.stop_reason in ("end", "stop", "length") for r in results)
    # Every request made the server generate: an empty middle is a model's answer too (nano ends at once at
    # most of these cursors: one generated token, the end token), and some answers hold text.
    assert all(r.completion_tokens and r.completion_tokens >= 1 for r in results)
    assert any(r.text.strip() for r in results)
    # /infill tokenizes the prefix and suffix apart and leads with llama.cpp's repo header, so its prompt is not
    # fimtune's: the share of equal completions is measured in benchmarks/llamacpp_latency.py, not promised.
    assert all(r.prompt_tokens and r.prompt_tokens > 0 for r in results)


def test_cancel_stops_generation_on_the_server(server: LlamaServer, local: Engine) -> None:
    endless = make_engine(EngineSettings(engine="openai", endpoint=server.url, extra={"ignore_eos": True}))
    # llama-server caps its slot at the model's training context (nano: 1,024 tokens) and ends a generation
    # with "length" once the slot is full, however many tokens were asked for. So the prompt is short, and the
    # time to fill the slot is measured, not assumed: a 758-token prompt left room for 266 tokens, about 0.37 s,
    # and a cancel at a fixed 0.3 s raced the full slot.
    fim = FimRequest("r", "a.py", "python", "def add(a, b):\n    return ", "\n")
    short = local.prompt_spec().request(fim, max_tokens=8)  # type: ignore[attr-defined]
    long = EngineRequest(rendered=short.rendered, fim=fim, max_tokens=4000, stop=())
    full = endless.complete(long)
    assert full.stop_reason == "length" and full.completion_tokens and full.completion_tokens > 500, full
    assert full.seconds > 0.2, full  # room for a cancel well inside the generation
    cancel = threading.Event()
    threading.Timer(full.seconds / 4, cancel.set).start()
    result = endless.complete(long, cancel)
    assert result.stop_reason == "cancelled", result
    # With one slot, the next request waits for any generation still running (about 3/4 of full.seconds);
    # after the cancel it starts at once.
    started = time.perf_counter()
    endless.complete(EngineRequest(rendered=short.rendered, fim=fim, max_tokens=4, stop=()))
    assert time.perf_counter() - started < full.seconds / 2


def test_a_prompt_longer_than_the_servers_context_is_a_clear_error(
    llama_server_exe: Path, nano_gguf: Path, local: Engine
) -> None:
    small = LlamaServer(llama_server_exe, nano_gguf, ctx=128)
    try:
        remote = make_engine(EngineSettings(engine="openai", endpoint=small.url))
        req = requests(local, 1)[0]
        assert req.rendered.prompt_tokens > 128
        with pytest.raises(EngineError) as err:
            remote.complete(req)
        message = str(err.value)
        print(message)
        assert "context" in message and small.url in message and "\n" not in message
        # A few tokens: the small server's context holds the short prompt and these, nothing to shift.
        fim = FimRequest("r", "a.py", "python", "def add(a, b):\n    return ", "\n")
        short = local.prompt_spec().request(fim, max_tokens=8)  # type: ignore[attr-defined]
        assert remote.complete(short).stop_reason in ("end", "stop", "length")  # and it keeps serving
    finally:
        small.close()


@pytest.fixture(scope="module")
def own_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus of fimtune's own package, held-out files for eval: Python that nano completes now and then."""
    from fimtune.config import CorpusConfig
    from fimtune.corpus.pipeline import build_corpus

    out = tmp_path_factory.mktemp("own-corpus") / "corpus"
    repo = tmp_path_factory.mktemp("own-repo") / "fimtune"
    shutil.copytree(REPO / "fimtune", repo, ignore=shutil.ignore_patterns("models", "__pycache__"))
    cfg = CorpusConfig(repos=[str(repo)], out=str(out), workers=1, split="file", test_fraction=0.3)
    build_corpus(cfg, progress=False)
    return out


def test_eval_through_llama_server_scores_as_the_local_engine(
    server: LlamaServer, own_corpus: Path, tmp_path: Path
) -> None:
    from fimtune.eval.run import EvalConfig, run_eval

    common = {
        "corpus": str(own_corpus),
        "base_model": "nano",
        "limit": 40,
        "max_tokens": 24,
        "dtype": "fp32",
    }
    local = run_eval(EvalConfig(**common, out=str(tmp_path / "local.json")), progress=False)
    served = run_eval(
        EvalConfig(**common, engine="openai", endpoint=server.url, out=str(tmp_path / "served.json")), progress=False
    )
    a = {r["id"]: r for r in local.examples}
    b = {r["id"]: r for r in served.examples}
    assert a.keys() == b.keys() and len(a) >= 10
    (ma,), (mb,) = local.report["models"].values(), served.report["models"].values()
    # The same prompts: exact match within two examples of each other (a near-tied greedy step may part them).
    assert abs(ma["exact_match"] - mb["exact_match"]) <= 2 / len(a) + 1e-9, (ma["exact_match"], mb["exact_match"])
    same = sum(a[k]["completion"] == b[k]["completion"] for k in a)
    print(f"eval: exact match {ma['exact_match']:.3f} local, {mb['exact_match']:.3f} served; {same}/{len(a)} same")
    assert same >= 0.8 * len(a)  # measured: 37 of 40


def test_a_model_the_server_has_not_loaded_is_a_clear_error(llama_server_exe: Path, nano_gguf: Path) -> None:
    """llama-server's router mode: a model in its folder, not loaded (no autoload), and a name it does not know."""
    import socket as _socket

    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = nano_gguf.parent
    cmd = [str(llama_server_exe), "--models-dir", str(folder), "--no-models-autoload", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "-t", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
                    names = [m["id"] for m in json.loads(r.read())["data"]]
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert nano_gguf.stem in names
        req = EngineRequest(
            rendered=_short_render(), fim=FimRequest("r", "a.py", "python", "x = ", "\n"), max_tokens=4, stop=()
        )
        for model, needle in ((nano_gguf.stem, "has not loaded it"), ("nope", "Set model to a name the server lists")):
            engine = make_engine(EngineSettings(engine="openai", endpoint=url, model=model))
            with pytest.raises(EngineError) as err:
                engine.complete(req)
            assert needle in str(err.value) and url in str(err.value) and "\n" not in str(err.value)
    finally:
        proc.terminate()
        proc.wait(10)


def _short_render() -> Any:
    from fimtune.prompting import resolve_prompt

    spec = resolve_prompt(template="fimtune")
    return spec.render(FimRequest("r", "a.py", "python", "x = ", "\n"))


def test_a_server_whose_starter_dies_goes_with_it(llama_server_exe: Path, nano_gguf: Path) -> None:
    """The process that started a LlamaServer is killed without closing it: the kernel stops the server."""
    import sys

    code = (
        "import os, sys\nfrom pathlib import Path\nfrom fimtune.export.llamacpp import LlamaServer\n"
        f"s = LlamaServer(Path({str(llama_server_exe)!r}), Path({str(nano_gguf)!r}))\n"
        "print(s.proc.pid, flush=True)\nos.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    pid = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), f"llama-server {pid} outlived the process that started it"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
