"""The local transformers engine on `tiny`: stop strings, end token, max_tokens, cancellation, adapter on/off."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from fimtune.corpus.read import open_corpus  # noqa: E402
from fimtune.engines.base import Completion, Engine, EngineError, EngineRequest, EngineSettings, make_engine  # noqa: E402
from fimtune.engines.local import LocalEngine, on_model_thread, pick_device  # noqa: E402
from fimtune.fim_format import FimRequest, prompt_ids  # noqa: E402
from fimtune.run_meta import read_run_meta  # noqa: E402

torch.set_num_threads(1)

FIM = FimRequest("r", "m.py", "python", "def add(a, b):\n    return ", "\n\n\nprint(add(1, 2))\n")


@pytest.fixture(scope="module")
def base(fimtune_cache: Path) -> LocalEngine:
    engine = make_engine(EngineSettings(engine="local", base_model="tiny", device="cpu"))
    assert isinstance(engine, LocalEngine)
    return engine


@pytest.fixture(scope="module")
def tuned(tiny_run: Path) -> LocalEngine:
    return LocalEngine(EngineSettings(run=str(tiny_run)))


def request(engine: LocalEngine, fim: FimRequest = FIM, **changes: object) -> EngineRequest:
    return dataclasses.replace(engine.prompt_spec().request(fim), **changes)  # type: ignore[arg-type]


def test_is_an_engine_with_the_base_template_and_exact_budgets(base: LocalEngine) -> None:
    assert isinstance(base, Engine) and base.name == "local"
    from fimtune.models import bf16_supported

    expected = torch.bfloat16 if bf16_supported("cpu") else torch.float32  # dtype auto (test_dtype.py pins both)
    assert base.device == "cpu" and base.dtype == expected and not base.model.training
    spec = base.prompt_spec()
    assert spec.template.name == "fimtune" and spec.meta is None
    req = spec.request(FIM, max_tokens=10)
    assert req.max_tokens == 10 and "<|endoftext|>" in req.stop and req.rendered.exact
    completion = base.complete(req)
    assert (
        completion.prompt_tokens
        == req.rendered.prompt_tokens
        == len(prompt_ids("fimtune", req.rendered, base.tokenizer))
    )


def test_stop_string_ends_the_text_before_it(base: LocalEngine) -> None:
    raw = base.complete(request(base, stop=(), max_tokens=48))
    assert raw.stop_reason == "length" and raw.completion_tokens == 48
    text = raw.text
    # Two printable ASCII characters from the middle of what the model says anyway.
    i = next(i for i in range(3, len(text) - 2) if text[i : i + 2].isascii() and text[i : i + 2].isprintable())
    stop = text[i : i + 2]
    cut = base.complete(request(base, stop=("never-generated", stop), max_tokens=48))
    assert cut.stop_reason == "stop"
    assert cut.text == text[: text.find(stop)] and stop not in cut.text
    assert cut.completion_tokens is not None and cut.completion_tokens < 48


def test_end_token_and_template_tokens_never_reach_the_text(base: LocalEngine, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    # With the template's stop strings it stops at the first sentinel it writes, which is left out (at this
    # cursor tiny's random weights write one 8 tokens in).
    stops_early = dataclasses.replace(FIM, prefix="def add(a, b):\n    return a +")
    stopped = base.complete(request(base, stops_early))
    assert stopped.stop_reason == "stop"
    assert not any(s in stopped.text for s in base.prompt_spec().stops())

    req = request(base)
    # A copy of tiny whose output rows of the end token and of a byte it says greedily at step k are swapped:
    # it now says the end token exactly there.
    ids = torch.tensor([prompt_ids("fimtune", req.rendered, base.tokenizer)])
    greedy: list[int] = []
    with torch.inference_mode():
        for _ in range(8):
            nxt = int(base.model(input_ids=ids).logits[0, -1].argmax())
            greedy.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    k = next(i for i in range(2, 8) if greedy[i] < 256 and greedy[i] not in greedy[:i])
    end_id = base.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    folder = tmp_path / "tiny-ends"
    shutil.copytree(base.base_path, folder)
    weights = load_file(folder / "model.safetensors")
    head = weights["lm_head.weight"]
    head[[greedy[k], end_id]] = head[[end_id, greedy[k]]].clone()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    ends = LocalEngine(EngineSettings(base_model=str(folder)))
    done = ends.complete(request(ends, stop=(), max_tokens=64))
    assert done.stop_reason == "end" and done.completion_tokens == k + 1  # the end token is generated...
    assert done.text == base.tokenizer.decode(greedy[:k])  # ...but not part of the text
    assert "<|endoftext|>" not in done.text


def test_settled_ends_the_text_where_it_first_holds(base: LocalEngine) -> None:
    raw = base.complete(request(base, stop=(), max_tokens=48))
    seen: list[str] = []

    def settled(text: str) -> bool:
        seen.append(text)
        return len(text) >= 6

    cut = base.complete(request(base, stop=(), max_tokens=48, settled=settled))
    assert cut.stop_reason == "stop" and len(cut.text) >= 6 and raw.text.startswith(cut.text)
    assert cut.completion_tokens is not None and cut.completion_tokens < 48
    assert seen[-1] == cut.text and all(len(t) < 6 for t in seen[:-1])  # asked after every pass, all the text
    never = base.complete(request(base, stop=(), max_tokens=48, settled=lambda text: False))
    assert (never.text, never.stop_reason) == (raw.text, "length")


def test_a_template_token_ends_at_its_id_not_at_its_characters(
    base: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text is text: code that spells a sentinel (a tokenizer's source) is encoded as its characters, and a model
    that writes those characters has not ended; the sentinel token itself ends the completion."""
    import fimtune.engines.local as local
    from fimtune.engines.decoding import Decoded

    tok = base.fim_tokenizer
    sentinel = tok.token_to_id("<|fim_prefix|>")
    assert sentinel is not None
    ids, text_stops = base._split_stops(("<|endoftext|>", " <|fim_prefix|>", "\n", "x"))
    assert ids == {tok.token_to_id("<|endoftext|>"), sentinel} and text_stops == ("\n", "x")
    spelled = tok.encode("a = '<|fim_prefix|>'")
    assert sentinel not in spelled and tok.decode(spelled) == "a = '<|fim_prefix|>'"

    def writes(tokens: list[int], ended: bool) -> Callable[..., Decoded]:
        return lambda *args, **kwargs: Decoded(tokens, ended, 1)

    with monkeypatch.context() as m:
        m.setattr(local, "decode", writes(spelled, False))
        out = base.complete(request(base, max_tokens=len(spelled)))
        assert (out.text, out.stop_reason) == ("a = '<|fim_prefix|>'", "length")
        m.setattr(local, "decode", writes([*tok.encode("a = "), sentinel], True))
        out = base.complete(request(base, max_tokens=len(spelled)))
        assert (out.text, out.stop_reason) == ("a = ", "stop")


def test_max_tokens_is_respected(base: LocalEngine) -> None:
    for n in (1, 7):
        c = base.complete(request(base, stop=(), max_tokens=n))
        assert c.stop_reason == "length" and c.completion_tokens == n
    zero = base.complete(request(base, stop=(), max_tokens=0))
    assert zero.text == "" and zero.stop_reason == "length" and zero.completion_tokens == 0


class StepEvent(threading.Event):
    """A cancel event that tells the test when the engine has looked at it `after` times (one look per token)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.looks = 0
        self.generating = threading.Event()

    def is_set(self) -> bool:
        self.looks += 1
        if self.looks >= self.after:
            self.generating.set()
        return super().is_set()


def test_cancel_from_another_thread_stops_within_a_few_tokens(base: LocalEngine) -> None:
    cancel = StepEvent(after=5)
    result: list[object] = []
    worker = threading.Thread(
        target=lambda: result.append(base.complete(request(base, stop=(), max_tokens=4000), cancel))
    )
    worker.start()
    assert cancel.generating.wait(30)
    set_at = time.perf_counter()
    cancel.set()
    worker.join(30)
    latency = time.perf_counter() - set_at
    (completion,) = result
    assert completion.stop_reason == "cancelled"  # type: ignore[attr-defined]
    assert completion.completion_tokens < 40  # type: ignore[attr-defined]
    assert latency < 0.5, latency


def test_a_call_waiting_for_the_model_can_be_cancelled_and_threads_get_their_own_answers(base: LocalEngine) -> None:
    busy = StepEvent(after=3)
    first: list[object] = []
    worker = threading.Thread(target=lambda: first.append(base.complete(request(base, stop=(), max_tokens=4000), busy)))
    worker.start()
    assert busy.generating.wait(30)
    waiting = threading.Event()
    waiting.set()
    started = time.perf_counter()
    queued = base.complete(request(base), waiting)  # the model is busy: gives up without generating
    assert queued.stop_reason == "cancelled" and queued.completion_tokens == 0
    assert time.perf_counter() - started < 0.5
    busy.set()
    worker.join(30)

    # Concurrent calls are serialized and each gets exactly the answer it gets alone.
    reqs = [request(base, stop=(), max_tokens=n) for n in (5, 9, 13, 17)]
    alone = [base.complete(r).text for r in reqs]
    together: dict[int, str] = {}
    threads = [
        threading.Thread(target=lambda i=i: together.__setitem__(i, base.complete(reqs[i]).text)) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [together[i] for i in range(4)] == alone


def test_a_call_waiting_while_the_engine_closes_fails_with_an_engine_error(fimtune_cache: Path) -> None:
    engine = LocalEngine(EngineSettings(base_model="tiny", device="cpu"))
    req = request(engine, max_tokens=4)
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(engine.complete(req))
        except Exception as e:  # the test looks at which one
            outcome.append(e)

    engine._lock.acquire()  # a call in flight
    waiting, closing = threading.Thread(target=call), threading.Thread(target=engine.close)
    waiting.start()
    closing.start()
    time.sleep(0.2)  # both wait for the model now
    engine._lock.release()
    waiting.join(30)
    closing.join(30)
    (got,) = outcome
    # Whichever took the model first: the call's answer, or the engine's own error; never an AttributeError.
    assert isinstance(got, Completion) or (isinstance(got, EngineError) and "closed" in str(got)), repr(got)


def test_out_of_memory_is_one_engine_error_and_the_engine_goes_on(
    base: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fimtune.engines.local as local

    base.complete(request(base, max_tokens=3))  # fills the prompt cache
    assert base.cache_stats()["calls"] >= 1

    def oom(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with monkeypatch.context() as m:
        m.setattr(local, "decode", oom)
        with pytest.raises(EngineError, match=r"out of memory generating from a [0-9]+-token prompt"):
            base.complete(request(base, max_tokens=3))
    assert not base._prompt_cache.entries  # nothing kept from before the failure
    assert (base.complete(request(base, max_tokens=3)).completion_tokens or 0) >= 1


def test_every_call_runs_the_model_on_the_engines_one_thread(
    base: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever thread calls (the language server's workers take turns), the model runs on one thread: OpenMP
    keeps a team of threads per calling thread, and teams spin against each other."""
    import fimtune.engines.local as local

    ran: list[int] = []
    real = local.decode

    def recording(*args: Any, **kwargs: Any) -> Any:
        ran.append(threading.get_ident())
        return real(*args, **kwargs)

    callers: list[int] = []

    def call() -> None:
        callers.append(threading.get_ident())
        base.complete(request(base, max_tokens=2))

    with monkeypatch.context() as m:
        m.setattr(local, "decode", recording)
        call()
        for _ in range(3):
            worker = threading.Thread(target=call)
            worker.start()
            worker.join()
    assert len(ran) == 4 and len(set(ran)) == 1
    assert not set(ran) & set(callers)
    # Asked from the model thread itself (a caller that is already there), it runs at once instead of waiting
    # for itself.
    assert on_model_thread(lambda: on_model_thread(threading.get_ident)) == ran[0]


def test_a_stop_string_early_in_a_long_pass_is_seen(base: LocalEngine) -> None:
    """One forward pass can add many drafted tokens (a large --prompt-lookup): the watch reads all it added."""
    from fimtune.engines.local import _Watch

    tok = base.fim_tokenizer
    watch = _Watch(tok, ["STOP"], None)
    assert not watch(tok.encode("x = 1\n"))
    assert watch(tok.encode("x = 1\ny = STOP\n" + "word " * 300))


def examples_as_requests(engine: LocalEngine, corpus: Path, n: int = 4) -> list[EngineRequest]:
    spec = engine.prompt_spec()
    return [spec.request(ex, max_tokens=12) for ex in open_corpus(corpus).examples("test")[:n]]


def test_adapter_changes_the_model_and_without_adapter_is_the_base(
    base: LocalEngine, tuned: LocalEngine, tiny_run: Path, tiny_corpus: Path
) -> None:
    spec = tuned.prompt_spec()
    meta = read_run_meta(tiny_run)
    assert spec.meta == meta and spec.budgets.max_tokens == 256 and spec.template.name == meta.template
    assert tuned.adapter == tiny_run.resolve() and base.adapter is None and base.without_adapter() is base

    reqs = examples_as_requests(tuned, tiny_corpus)
    ids = torch.tensor([prompt_ids(meta.template, reqs[0].rendered, tuned.tokenizer)])
    peft_model: Any = tuned.model
    with torch.inference_mode():
        tuned_logits = tuned.model(input_ids=ids).logits
        base_logits = base.model(input_ids=ids).logits
        with peft_model.disable_adapter():
            off_logits = tuned.model(input_ids=ids).logits
    assert not torch.allclose(tuned_logits, base_logits, atol=1e-3)
    assert torch.equal(off_logits, base_logits)

    plain = base.without_adapter()
    view = tuned.without_adapter()
    assert view.name == "local-base" and isinstance(view, Engine)
    tuned_texts = [tuned.complete(r).text for r in reqs]
    assert [view.complete(r).text for r in reqs] == [plain.complete(r).text for r in reqs]
    assert tuned_texts != [base.complete(r).text for r in reqs]
    assert [tuned.complete(r).text for r in reqs] == tuned_texts  # the adapter is back on after the view ran


def test_run_folders_it_cannot_serve_are_refused_clearly(tiny_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "run"
    shutil.copytree(tiny_run, bad, ignore=shutil.ignore_patterns("checkpoints"))
    data = json.loads((bad / "fimtune.json").read_text())
    (bad / "fimtune.json").write_text(json.dumps({**data, "fim_format_version": 99}))
    with pytest.raises(EngineError, match=r"format version 99.*train again"):
        LocalEngine(EngineSettings(run=str(bad)))
    (bad / "fimtune.json").unlink()
    with pytest.raises(EngineError, match="not a run folder"):
        make_engine(EngineSettings(run=str(bad)))
    with pytest.raises(EngineError, match="base model"):
        LocalEngine(EngineSettings())


def test_template_of_a_run_cannot_be_overridden(tuned: LocalEngine) -> None:
    assert tuned.prompt_spec("fimtune").template.name == "fimtune"
    with pytest.raises(EngineError, match="trained with template 'fimtune'"):
        tuned.prompt_spec("starcoder")


def test_device_choice() -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else pick_device("auto"))
    with pytest.raises(EngineError, match="unknown device 'tpu'"):
        pick_device("tpu")


def test_prompt_lookup_keeps_the_greedy_text_in_fewer_forward_passes(fimtune_cache: Path) -> None:
    """Prompt lookup decoding drafts the next tokens from text already in the prompt and keeps what the model
    agrees with: in fp32 each completion is the plain greedy one, and text that repeats costs fewer passes."""
    repeated = FimRequest(
        "r",
        "m.py",
        "python",
        "def report(orders, rate):\n    total = compute_total(orders, rate)\n\n\n"
        "def again(orders, rate):\n    total = ",
        "\n    return total\n",
    )
    results = {}
    for lookup in (0, 6):
        engine = LocalEngine(EngineSettings(base_model="tiny", device="cpu", dtype="fp32", prompt_lookup=lookup))
        passes: list[int] = []
        engine.model.model.register_forward_hook(lambda *_, seen=passes: seen.append(1))
        done = [engine.complete(request(engine, fim, max_tokens=24)) for fim in (FIM, repeated)]
        results[lookup] = ([c.text for c in done], sum(c.completion_tokens or 0 for c in done), len(passes))
    (plain_texts, plain_tokens, plain_passes), (texts, tokens, passes_) = results[0], results[6]
    assert texts == plain_texts and tokens == plain_tokens > 0
    assert plain_passes == plain_tokens  # one pass per token (the prompt's pass makes the first)
    assert passes_ < plain_passes
