"""`fimtune eval` through the real CLI: base vs tuned on `tiny`, exact scores with the fixed engine, bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from fimtune.cli import main  # noqa: E402
from fimtune.corpus.read import open_corpus  # noqa: E402
from fimtune.eval.metrics import normalize, score_example  # noqa: E402
from fimtune.eval.run import EvalConfig, pick, run_eval  # noqa: E402
from fimtune.models import load_tokenizer, resolve_base_model  # noqa: E402
from fimtune.postprocess import StopRules, postprocess  # noqa: E402
from fimtune.prompting import PromptSpec  # noqa: E402
from fimtune.run_meta import read_run_meta  # noqa: E402

torch.set_num_threads(1)


def eval_cli(*argv: str) -> int:
    return main(["eval", "-q", *argv])


def read_rows(report: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in report.with_suffix(".examples.jsonl").read_text().splitlines()]


def test_compare_base_and_tuned_end_to_end(tiny_run: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "report.json"
    args = ["--corpus", str(tiny_corpus), "--run", str(tiny_run), "--compare", "--limit", "6", "--max-tokens", "16"]
    assert eval_cli(*args, "--out", str(out)) == 0

    report = json.loads(out.read_text())
    meta = read_run_meta(tiny_run)
    assert set(report["models"]) == {"base", "tuned"}
    assert report["corpus"]["examples_evaluated"] == 6 and report["corpus"]["split"] == "test"
    assert report["corpus"]["examples_in_split"] == len(open_corpus(tiny_corpus).examples("test"))
    assert report["engine"]["name"] == "local" and report["engine"]["device"] == "cpu"
    assert report["template"]["name"] == meta.template and report["template"]["budgets"] == meta.budgets
    assert report["max_tokens"] == 16 and report["settings"]["compare"] is True
    assert report["timing"]["examples_per_s"] > 0 and report["timing"]["completions"] == 12

    rows = read_rows(out)
    assert len(rows) == 12
    chosen = pick(open_corpus(tiny_corpus).examples("test"), 6, 0)
    spec = PromptSpec.from_run(tiny_run, load_tokenizer(resolve_base_model(meta.base_model)))
    for name, model in report["models"].items():
        mine = [r for r in rows if r["model"] == name]
        assert [r["id"] for r in mine] == [ex.id for ex in chosen]
        # Both models were prompted through the run's PromptSpec, with exact token counts.
        assert [r["prompt_tokens"] for r in mine] == [spec.render(ex).prompt_tokens for ex in chosen]
        assert [r["rendered_prompt_tokens"] for r in mine] == [r["prompt_tokens"] for r in mine]
        assert all(r["completion_tokens"] <= 16 for r in mine)
        assert model["n"] == 6 and sum(model["stop_reasons"].values()) == 6
        for rules, scores in (("rules", model), ("raw", model["raw"])):
            for metric in ("exact_match", "edit_similarity"):
                assert 0.0 <= scores[metric] <= 1.0
                assert math.isclose(scores[metric], sum(r[rules]["scores"][metric] for r in mine) / 6)
            assert sum(g["n"] for g in scores["by_span_kind"].values()) == 6
            assert set(scores["by_language"]) == {ex.language for ex in chosen}
        # What is scored is what postprocess makes of the completion, with the default rules and with none.
        for r, ex in zip(mine, chosen, strict=True):
            for rules, stop_rules in (("rules", StopRules()), ("raw", StopRules.off())):
                lead = spec.render(ex).lead  # the prefix's blanks rendering moved into the middle
                text = postprocess(r["completion"], ex.prefix, ex.suffix, ex.language, stop_rules, lead=lead).text
                assert r[rules]["text"] == text
                assert r[rules]["scores"] == score_example(
                    text, ex.middle, prefix=ex.prefix, suffix=ex.suffix, language=ex.language
                )
    by_model = {name: [r["completion"] for r in rows if r["model"] == name] for name in ("base", "tuned")}
    assert by_model["base"] != by_model["tuned"]  # the adapter is on for one and off for the other

    comparison = report["comparison"]
    assert (comparison["a"], comparison["b"]) == ("base", "tuned")
    for rules in ("rules", "raw"):
        for metric in ("exact_match", "edit_similarity"):
            d = comparison[rules][metric]
            base_score = (
                report["models"]["base"][metric] if rules == "rules" else report["models"]["base"]["raw"][metric]
            )
            assert math.isclose(d["mean_a"], base_score)
            assert math.isclose(d["diff"], d["mean_b"] - d["mean_a"])
            assert d["low"] <= d["diff"] + 1e-12 and d["diff"] <= d["high"] + 1e-12

    md = out.with_suffix(".md").read_text()
    assert "| base | 6 |" in md and "| tuned | 6 |" in md and "tuned vs base" in md and "## By language" in md
    png = out.with_suffix(".png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


@pytest.fixture(scope="module")
def corpus_with_empty_middles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture repositories cut into empty middles and whole lines only: both are in the test split."""
    from fimtune.config import CorpusConfig, SpanConfig
    from fimtune.corpus.pipeline import build_corpus
    from tests.conftest import FIXTURE_REPOS

    out = tmp_path_factory.mktemp("empties") / "corpus"
    spans = SpanConfig(mix={"empty": 1.0, "line": 1.0}, examples_per_kb=4.0)
    repos = [str(FIXTURE_REPOS / name) for name in ("pyshop", "gotool", "rsutil", "webkit")]
    build_corpus(CorpusConfig(repos=repos, out=str(out), workers=1, split="file", test_fraction=0.3, spans=spans))
    return out


def test_fixed_engine_gives_exact_scores(fimtune_cache: Path, corpus_with_empty_middles: Path, tmp_path: Path) -> None:
    examples = open_corpus(corpus_with_empty_middles).examples("test")
    n = len(examples)
    common = ["--corpus", str(corpus_with_empty_middles), "--base-model", "tiny", "--engine", "fixed"]

    # Nothing completed: exact where the middle is empty, zero elsewhere.
    out = tmp_path / "empty.json"
    assert eval_cli(*common, "--fixed-text", "", "--out", str(out)) == 0
    model = json.loads(out.read_text())["models"]["base"]
    empty = sum(1 for ex in examples if not normalize(ex.middle))
    assert 0 < empty < n
    assert model["n"] == n and model["raw"]["exact_match"] == model["raw"]["edit_similarity"] == empty / n
    assert model["exact_match"] == empty / n and model["empty_middle_accuracy"] == 1.0
    assert model["stop_reasons"] == {"end": n}

    # One example's middle, followed by the template's end token (a stop string the engine cuts at).
    target = next(ex for ex in examples if normalize(ex.middle))
    out = tmp_path / "fixed.json"
    assert eval_cli(*common, "--fixed-text", target.middle + "<|endoftext|>more", "--out", str(out)) == 0
    report = json.loads(out.read_text())
    model = report["models"]["base"]
    same = sum(1 for ex in examples if normalize(ex.middle) == normalize(target.middle))
    assert model["raw"]["exact_match"] == same / n and model["stop_reasons"] == {"stop": n}
    rows = read_rows(out)
    assert all(r["completion"] == target.middle for r in rows)
    (hit,) = [r for r in rows if r["id"] == target.id]
    assert hit["raw"]["scores"]["exact_match"] == 1.0 and hit["raw"]["scores"]["edit_similarity"] == 1.0
    assert report["template"]["name"] == "fimtune" and report["template"]["source"] == "detected"
    assert "comparison" not in report

    # --max-tokens reaches the engine (the fixed engine counts characters as tokens).
    out = tmp_path / "short.json"
    assert eval_cli(*common, "--fixed-text", "abcdef", "--max-tokens", "3", "--out", str(out)) == 0
    model = json.loads(out.read_text())["models"]["base"]
    assert model["stop_reasons"] == {"length": n} and {r["completion"] for r in read_rows(out)} == {"abc"}


def test_engines_without_a_tokenizer_render_through_the_runs_prompt_spec(
    tiny_run: Path, tiny_corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "served.json"
    args = ["--corpus", str(tiny_corpus), "--run", str(tiny_run), "--engine", "fixed", "--fixed-text", "x = 1"]
    assert eval_cli(*args, "--out", str(out)) == 0
    report = json.loads(out.read_text())
    meta = read_run_meta(tiny_run)
    assert list(report["models"]) == ["tuned"] and report["engine"]["name"] == "fixed"
    assert report["template"]["source"] == f"{tiny_run}/fimtune.json" and report["template"]["exact_token_counts"]
    assert report["template"]["budgets"] == meta.budgets and report["max_tokens"] == meta.budgets["max_middle_tokens"]
    more = tmp_path / "more.json"  # a cap past the run's middle budget: the report gives the one that held
    assert eval_cli(*args, "--max-tokens", "100000", "--limit", "2", "--out", str(more)) == 0
    assert json.loads(more.read_text())["max_tokens"] == meta.budgets["max_middle_tokens"]
    spec = PromptSpec.from_run(tiny_run, load_tokenizer(tiny_run))
    examples = open_corpus(tiny_corpus).examples("test")
    rows = read_rows(out)
    assert [r["id"] for r in rows] == [ex.id for ex in examples]
    assert [r["rendered_prompt_tokens"] for r in rows] == [spec.render(ex).prompt_tokens for ex in examples]
    assert (
        max(r["rendered_prompt_tokens"] for r in rows) <= meta.budgets["max_tokens"] - meta.budgets["max_middle_tokens"]
    )


def test_limit_is_a_seeded_sample_in_corpus_order(tiny_corpus: Path) -> None:
    examples = open_corpus(tiny_corpus).examples("test")
    a, b, c = pick(examples, 4, 0), pick(examples, 4, 0), pick(examples, 4, 1)
    assert a == b and len(a) == 4 and a != c
    assert [examples.index(ex) for ex in a] == sorted(examples.index(ex) for ex in a)
    assert pick(examples, 0, 0) == examples and pick(examples, 10_000, 0) == examples


def test_bad_input_is_one_actionable_line(
    tiny_corpus: Path, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def error(*argv: str) -> str:
        assert eval_cli(*argv, "--out", str(tmp_path / "r.json")) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fimtune eval: error: ")
        return lines[0]

    corpus = ["--corpus", str(tiny_corpus)]
    assert "does not exist" in error("--corpus", str(tmp_path / "nowhere"), "--base-model", "tiny")
    no_meta = tmp_path / "not-a-run"
    shutil.copytree(tiny_run, no_meta, ignore=shutil.ignore_patterns("checkpoints", "fimtune.json"))
    assert "not a run folder written by `fimtune train`" in error(*corpus, "--run", str(no_meta))
    assert "--compare needs --run" in error(*corpus, "--base-model", "tiny", "--compare")
    assert "--engine: must be one of local, openai" in error(*corpus, "--base-model", "tiny", "--engine", "vllm")
    assert "needs --engine local" in error(*corpus, "--run", str(tiny_run), "--compare", "--engine", "openai")
    assert "--run RUN" in error(*corpus, "--engine", "openai", "--endpoint", "http://127.0.0.1:9")  # no default
    assert "--split: must be one of train, test" in error(*corpus, "--base-model", "tiny", "--split", "validation")
    assert not (tmp_path / "r.json").exists()


def test_run_eval_is_deterministic(fimtune_cache: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    def scores(out: Path) -> dict[str, Any]:
        cfg = EvalConfig(corpus=str(tiny_corpus), base_model="tiny", limit=3, max_tokens=8, out=str(out))
        result = run_eval(cfg, progress=False)
        return {k: v for k, v in result.report["models"]["base"].items() if k not in ("timing",)}

    assert scores(tmp_path / "a.json") == scores(tmp_path / "b.json")


def test_without_a_model_the_best_builtin_base_is_evaluated(
    fimtune_cache: Path, tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fimtune.models import ensure_tiny_model, packaged_model_dir

    if (packaged_model_dir("pico") / "config.json").exists():
        pytest.skip("pico is shipped: it is the default")
    monkeypatch.setenv("FIMTUNE_NANO", str(ensure_tiny_model()))  # any model folder stands in for nano here
    out = tmp_path / "r.json"
    assert eval_cli("--corpus", str(tiny_corpus), "--limit", "2", "--max-tokens", "4", "--out", str(out)) == 0
    report = json.loads(out.read_text())
    assert report["models"]["base"]["description"] == "nano (base model)"


def test_out_never_replaces_a_file_fimtune_did_not_write(tiny_corpus: Path, tmp_path: Path) -> None:
    mine = tmp_path / "notes.md"
    mine.write_text("mine\n")
    base = ["--corpus", str(tiny_corpus), "--base-model", "tiny", "--limit", "2", "--max-tokens", "4"]
    assert eval_cli(*base, "--out", str(tmp_path / "notes.json")) == 1  # its report.md would be notes.md
    assert mine.read_text() == "mine\n" and not (tmp_path / "notes.json").exists()
    (tmp_path / "data.json").write_text("[1, 2]")
    assert eval_cli(*base, "--out", str(tmp_path / "data.json")) == 1
    assert (tmp_path / "data.json").read_text() == "[1, 2]"
    out = tmp_path / "report.json"
    assert eval_cli(*base, "--out", str(out)) == 0
    assert eval_cli(*base, "--out", str(out)) == 0  # its own report is replaced


def test_a_served_model_named_only_by_its_template_gets_the_same_prompt_in_eval_and_serve() -> None:
    from fimtune.engines import make_engine
    from fimtune.eval.run import _spec_without_engine
    from fimtune.fim_format import FimRequest
    from lsp_server.engine_host import prompt_spec
    from lsp_server.settings import parse_settings

    fim = FimRequest("shop", "shop/cart.py", "python", "def add(x):\n" * 400, "\nprint(1)\n" * 200, ())
    cfg = EvalConfig(corpus="c", engine="openai", endpoint="http://127.0.0.1:9", template="qwen2.5-coder")
    cfg.validate()
    settings, warnings = parse_settings(
        {"engine": "openai", "endpoint": "http://127.0.0.1:9", "template": "qwen2.5-coder"}
    )
    assert not warnings
    engine = make_engine(settings.engine_settings())
    served, evaluated = prompt_spec(engine, settings), _spec_without_engine(cfg)
    assert served.tokenizer is None and evaluated.tokenizer is None  # the same estimate, on both sides
    assert served.render(fim).prompt.encode() == evaluated.render(fim).prompt.encode()


def test_a_corpus_built_with_other_context_settings_than_the_run_is_warned(
    tiny_run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fimtune.eval.run import _warn_if_context_differs

    spec = PromptSpec.from_run(tiny_run)
    assert spec.meta is not None and spec.meta.context
    with caplog.at_level("WARNING", logger="fimtune.eval.run"):
        _warn_if_context_differs({"config": {"context": dict(spec.meta.context)}}, spec)
        assert not caplog.records
        _warn_if_context_differs({"config": {"context": {**spec.meta.context, "max_chars": 1}}}, spec)
    assert "other context settings" in caplog.text and "max_chars 1 vs" in caplog.text
