"""The eval run, top to bottom: examples -> engine(s) -> prompts via PromptSpec -> complete -> stop rules -> scores."""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from argparse import SUPPRESS
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fimtune import __version__
from fimtune.config import ConfigError, check, setting
from fimtune.corpus.read import CorpusReadError, open_corpus
from fimtune.engines.base import (
    ENGINES,
    PROMPT_CACHE,
    PROMPT_LOOKUP,
    Completion,
    Engine,
    EngineError,
    EngineRequest,
    EngineSettings,
    make_engine,
)
from fimtune.eval.metrics import METRICS, aggregate, paired_bootstrap, score_example
from fimtune.eval.report import MAIN_METRICS, report_paths, write_report
from fimtune.fim_format import TEMPLATES, FimFormatError
from fimtune.models import DEVICE_RULE, DTYPES
from fimtune.outputs import OutputRefused, check_output_files
from fimtune.postprocess import StopRules, postprocess
from fimtune.prompting import PromptSpec, resolve_prompt
from fimtune.records import SPLITS, FimExample
from fimtune.run_meta import RunMetaError, read_run_meta

log = logging.getLogger(__name__)

# Rule sets every completion is scored under: what the editor inserts, and the raw completion.
RULES: dict[str, StopRules] = {"rules": StopRules(), "raw": StopRules.off()}
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


class EvalError(Exception):
    """Eval cannot run or failed; the message names the flag, folder, engine or example and what to do."""


@dataclass
class EvalConfig:
    """Everything `fimtune eval` does; recorded in report.json."""

    corpus: str = setting("", help="corpus folder written by `fimtune build-corpus`", flag=True)
    base_model: str = setting(
        "",
        help="model folder, Hugging Face model id, or a built-in model (`nano`, `pico`, `tiny`); default: the run's "
        "base, or without --run the best built-in model installed",
        flag=True,
    )
    run: str = setting("", help="a `fimtune train` run folder (adapter + fimtune.json)", flag=True)
    compare: bool = setting(
        False,
        help="also evaluate the run's base model (same prompts); report the difference with paired bootstrap intervals",
        flag=True,
    )
    engine: str = setting(
        "local",
        help="where completions come from: local (transformers), openai (vLLM), llamacpp, ollama or fixed",
        flag=True,
        choices=tuple(ENGINES),
    )
    endpoint: str = setting("", help="HTTP engines: base URL of the server", flag=True)
    model: str = setting("", help="HTTP engines: the model (or served adapter) name", flag=True)
    template: str = setting(
        "auto",
        help="FIM template of a base model (default: detected; a run's is fixed by its fimtune.json)",
        flag=True,
        choices=("auto", *TEMPLATES),
        metavar="NAME",
    )
    split: str = setting("test", help="corpus split to evaluate", flag=True, choices=SPLITS)
    limit: int = setting(
        0, help="evaluate a seeded sample of N examples", flag=True, zero="every example of the split", at_least=1
    )
    max_tokens: int = setting(0, help="tokens per completion", flag=True, zero="the run's middle budget", at_least=1)
    seed: int = setting(0, help="seed of the --limit sample and of the bootstrap", flag=True)
    device: str = setting("auto", help="local engine: auto, cpu, cuda, cuda:N or mps", flag=True, **DEVICE_RULE)
    dtype: str = setting(
        "auto",
        help="local engine: auto (default) is bf16 where torch reports bf16 matrix support on the device, else fp32",
        flag=True,
        choices=DTYPES,
    )
    prompt_lookup: int = setting(
        PROMPT_LOOKUP,
        help="local engine: draft up to N tokens from the prompt's own text and check them in one pass (prompt "
        "lookup decoding; 0: off; `fimtune serve` uses the same default)",
        flag=True,
        zero="off",
        at_least=0,
        at_most=64,
    )
    prompt_cache: int = setting(
        PROMPT_CACHE,
        help="local engine: keep the keys and values of the last N prompts and compute a prompt from where it "
        "differs from them (0: off; `fimtune serve` uses the same default)",
        flag=True,
        zero="off",
        at_least=0,
        at_most=64,
    )
    out: str = setting("report.json", help="report path; report.md and report.png go beside it", flag=True)
    fixed_text: str = setting(
        "", help="engine `fixed`: the completion it gives (tests and wiring checks)", flag=True, flag_help=SUPPRESS
    )

    def validate(self) -> None:
        try:
            check(self, flags=True)
        except ConfigError as e:
            raise EvalError(str(e)) from None
        if not self.corpus:
            raise EvalError("--corpus: give the corpus folder to evaluate on (written by `fimtune build-corpus`)")
        if not self.run and not self.base_model and self.engine != "local" and self.template == "auto":
            raise EvalError(
                "give the model to evaluate: --run RUN (a `fimtune train` folder), --base-model M, or for a served "
                "model the FIM template it was trained with (--template NAME)"
            )
        if self.compare and not self.run:
            raise EvalError("--compare needs --run RUN: it evaluates the run's base model and its adapter side by side")
        if self.compare and self.engine != "local":
            raise EvalError(
                f"--compare runs the base and the adapter on one loaded model and needs --engine local; with "
                f"--engine {self.engine}, evaluate the served base and the served adapter in two runs (--model)"
            )


@dataclass
class Model:
    """One model under evaluation: its name in the report, what it is, and the engine that completes for it."""

    label: str
    description: str
    engine: Engine


@dataclass
class EvalResult:
    report: dict[str, Any]
    examples: list[dict[str, Any]]
    paths: list[Path] = field(default_factory=list)

    def summary(self) -> list[str]:
        """A few lines for the terminal: headline scores, the difference, where the files are."""
        lines = []
        for name, m in self.report["models"].items():
            lines.append(
                f"{name}: exact match {m['exact_match']:.3f}, edit similarity {m['edit_similarity']:.3f} "
                f"(raw {m['raw']['exact_match']:.3f} / {m['raw']['edit_similarity']:.3f}), n={m['n']}, "
                f"{m['timing']['examples_per_s']:.2f} examples/s"
            )
        comparison = self.report.get("comparison")
        if comparison:
            for metric in MAIN_METRICS:
                d = comparison["rules"][metric]
                lines.append(
                    f"{comparison['b']} - {comparison['a']} {metric.replace('_', ' ')}: {d['diff']:+.3f} "
                    f"[{d['low']:+.3f}, {d['high']:+.3f}]"
                )
        if self.paths:
            lines.append("wrote " + ", ".join(str(p) for p in self.paths))
        return lines


def is_report(path: Path) -> bool:
    """Whether `path` is a report `fimtune eval` wrote (the files beside it are then its own too)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "fimtune_version" in data and "models" in data


def pick(examples: list[FimExample], limit: int, seed: int) -> list[FimExample]:
    """All examples, or a seeded sample of `limit` of them in corpus order."""
    if not limit or limit >= len(examples):
        return examples
    chosen = set(random.Random(seed).sample(range(len(examples)), limit))
    return [ex for i, ex in enumerate(examples) if i in chosen]


def _spec_without_engine(cfg: EvalConfig) -> PromptSpec:
    """The PromptSpec for an engine that holds no tokenizer (HTTP, fixed): the run's fimtune.json with the
    tokenizer training saved beside it (PromptSpec.from_run), the base model's template and tokenizer, or, for
    a served model named only by its template, that template with the character estimate `serve` uses too."""
    from fimtune.models import ModelError

    try:
        return resolve_prompt(run=cfg.run, base_model=cfg.base_model or None, template=cfg.template)
    except (ModelError, RunMetaError, FimFormatError) as e:
        raise EvalError(str(e)) from None


def build_models(cfg: EvalConfig) -> tuple[list[Model], PromptSpec, dict[str, Any]]:
    """The engine(s) to evaluate, the one PromptSpec every model's prompts come from, and the engine's details."""
    settings = EngineSettings(
        engine=cfg.engine,
        endpoint=cfg.endpoint,
        model=cfg.model,
        run=cfg.run,
        base_model=cfg.base_model,
        device=cfg.device,
        dtype=cfg.dtype,
        prompt_lookup=cfg.prompt_lookup,
        prompt_cache=cfg.prompt_cache,
        fixed_text=cfg.fixed_text,
    )
    info: dict[str, Any] = {"name": cfg.engine}
    try:
        if cfg.engine != "local":
            spec = _spec_without_engine(cfg)
            engine = make_engine(settings)
            info.update(endpoint=cfg.endpoint, model=cfg.model)
            what = cfg.model or cfg.base_model or cfg.run
            label = "tuned" if cfg.run else "base"
            return [Model(label, f"{what} served by {cfg.engine}", engine)], spec, info

        from fimtune.engines.local import LocalEngine

        local = make_engine(settings)
        assert isinstance(local, LocalEngine)
        spec = local.prompt_spec(cfg.template)
    except EngineError as e:
        raise EvalError(str(e)) from None
    info.update(device=local.device, dtype=str(local.dtype).removeprefix("torch."), base_model=str(local.base_path))
    base_name = cfg.base_model or (local.meta.base_model if local.meta else "")
    if local.adapter is None:
        return [Model("base", f"{base_name} (base model)", local)], spec, info
    info["adapter"] = str(local.adapter)
    tuned = Model("tuned", f"{cfg.run} (LoRA adapter on {base_name})", local)
    if not cfg.compare:
        return [tuned], spec, info
    base = Model("base", f"{base_name} (the same loaded model, adapter disabled)", local.without_adapter())
    return [base, tuned], spec, info


def _complete(model: Model, req: EngineRequest, ex: FimExample) -> Completion:
    try:
        return model.engine.complete(req)
    except EngineError as e:
        raise EvalError(f"{model.label} model on example {ex.id} ({ex.repo}/{ex.path}): {e}") from None


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def evaluate_model(
    model: Model, examples: list[FimExample], requests: list[EngineRequest], bar: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Complete every example, apply both rule sets, score; returns the model's summary, the per-example records
    and the score rows per rule set (for the paired bootstrap)."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in RULES}
    records: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    cuts: Counter[str] = Counter()
    latencies: list[float] = []
    tokens = 0
    started = time.perf_counter()
    for ex, req in zip(examples, requests, strict=True):
        completion = _complete(model, req, ex)
        reasons[completion.stop_reason] += 1
        latencies.append(completion.seconds)
        tokens += completion.completion_tokens or 0
        record: dict[str, Any] = {
            "model": model.label,
            "id": ex.id,
            "repo": ex.repo,
            "path": ex.path,
            "language": ex.language,
            "span_kind": ex.span_kind,
            "reference": ex.middle,
            "completion": completion.text,
            "stop_reason": completion.stop_reason,
            "rendered_prompt_tokens": req.rendered.prompt_tokens,  # PromptSpec's count (the model's tokenizer)
            "prompt_tokens": completion.prompt_tokens,  # the engine's own count, if it gives one
            "completion_tokens": completion.completion_tokens,
            "seconds": round(completion.seconds, 6),
        }
        for name, rules in RULES.items():
            processed = postprocess(completion.text, ex.prefix, ex.suffix, ex.language, rules, lead=req.rendered.lead)
            scores = score_example(processed.text, ex.middle, prefix=ex.prefix, suffix=ex.suffix, language=ex.language)
            rows[name].append({**scores, "span_kind": ex.span_kind, "language": ex.language})
            record[name] = {"text": processed.text, "cuts": list(processed.cuts), "scores": scores}
            if name == "rules":
                cuts.update(processed.cuts)
        records.append(record)
        bar.update(1)
    seconds = time.perf_counter() - started
    summary: dict[str, Any] = {"description": model.description}
    for name in RULES:
        part = {
            **aggregate(rows[name], metrics=METRICS),
            "by_span_kind": aggregate(rows[name], by="span_kind", metrics=METRICS),
            "by_language": aggregate(rows[name], by="language", metrics=METRICS),
        }
        if name == "rules":
            summary.update(part)
        else:
            summary[name] = part
    summary["stop_reasons"] = dict(sorted(reasons.items()))
    summary["cuts"] = dict(sorted(cuts.items()))
    summary["timing"] = {
        "seconds": round(seconds, 4),
        "examples_per_s": round(len(examples) / seconds, 3) if seconds > 0 else 0.0,
        "engine_seconds": round(math.fsum(latencies), 4),
        "latency_p50_s": round(_quantile(latencies, 0.5), 4),
        "latency_p95_s": round(_quantile(latencies, 0.95), 4),
        "completion_tokens": tokens,
        "completion_tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else 0.0,
    }
    return summary, records, rows


def compare(base: dict[str, list[dict[str, Any]]], tuned: dict[str, list[dict[str, Any]]], seed: int) -> dict[str, Any]:
    """tuned - base per metric (both rule sets), with a paired bootstrap interval over the examples where the
    metric applies to both."""
    out: dict[str, Any] = {
        "a": "base",
        "b": "tuned",
        "difference": "tuned - base",
        "confidence": CONFIDENCE,
        "n_resamples": BOOTSTRAP_RESAMPLES,
        "seed": seed,
    }
    for name in RULES:
        per_metric: dict[str, Any] = {}
        for metric in METRICS:
            pairs = [
                (float(x[metric]), float(y[metric]))
                for x, y in zip(base[name], tuned[name], strict=True)
                if x[metric] is not None and y[metric] is not None
            ]
            if not pairs:
                continue
            a, b = zip(*pairs, strict=True)
            d = paired_bootstrap(list(a), list(b), n_resamples=BOOTSTRAP_RESAMPLES, seed=seed, confidence=CONFIDENCE)
            per_metric[metric] = {**d, "n": len(pairs)}
        out[name] = per_metric
    return out


def _warn_if_context_differs(manifest: dict[str, Any], spec: PromptSpec) -> None:
    """The corpus holds each example's context as its build retrieved it: where the run was trained with other
    context settings, eval prompts differ from training's (and serving's)."""
    built = (manifest.get("config") or {}).get("context")
    if spec.meta is None or not spec.meta.context or not isinstance(built, dict):
        return
    changed = sorted(k for k in built.keys() | spec.meta.context.keys() if built.get(k) != spec.meta.context.get(k))
    if changed:
        log.warning(
            "the corpus was built with other context settings than the run was trained with (%s): its stored "
            "context is not what the run's prompts hold; rebuild it with the run's settings for a like-for-like eval",
            ", ".join(f"{k} {built.get(k)!r} vs {spec.meta.context.get(k)!r}" for k in changed),
        )


def run_eval(cfg: EvalConfig, progress: bool = True) -> EvalResult:
    """Run `fimtune eval` and write its report; raises EvalError on bad input or a failing engine."""
    from tqdm import tqdm

    started = time.perf_counter()
    out, corpus, available = _inputs(cfg)
    examples = pick(available, cfg.limit, cfg.seed)

    models, spec, engine_info = build_models(cfg)
    loaded = time.perf_counter()
    _warn_if_context_differs(corpus.manifest, spec)
    # At most the middle budget the model was trained with (PromptSpec.request caps it): the report says so.
    max_tokens = min(cfg.max_tokens or spec.budgets.max_middle_tokens, spec.budgets.max_middle_tokens)
    if cfg.max_tokens > max_tokens:
        log.warning("--max-tokens %d is more than the middle budget of the prompts: %d", cfg.max_tokens, max_tokens)
    try:
        requests = [spec.request(ex, max_tokens) for ex in examples]  # one rendering, shared by every model
    except FimFormatError as e:
        raise EvalError(str(e)) from None

    summaries: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    bar = tqdm(total=len(examples) * len(models), desc="eval", unit="ex", file=sys.stderr, disable=not progress)
    try:
        for model in models:
            bar.set_description(f"eval {model.label}")
            summaries[model.label], model_records, rows[model.label] = evaluate_model(model, examples, requests, bar)
            records += model_records
    finally:
        bar.close()
        for model in models:
            model.engine.close()
    finished = time.perf_counter()

    timing = {"started": started, "loaded": loaded, "finished": finished}
    report = _report(cfg, corpus, len(available), len(examples) * len(models), len(examples), engine_info, spec, timing)
    report["max_tokens"], report["models"] = max_tokens, summaries
    if "base" in rows and "tuned" in rows:
        report["comparison"] = compare(rows["base"], rows["tuned"], cfg.seed)
    result = EvalResult(report, records)
    try:
        result.paths = write_report(report, records, out)
    except OSError as e:
        raise EvalError(f"cannot write the report to {report_paths(out)[0]}: {e}") from None
    return result


def _inputs(cfg: EvalConfig) -> tuple[Path, Any, list[Any]]:
    """The checked settings' report path, corpus and the examples of the split, each failure one EvalError."""
    cfg.validate()
    if cfg.run:
        try:
            read_run_meta(cfg.run)
        except RunMetaError as e:
            raise EvalError(f"--run: {e}") from None
    out = Path(cfg.out).expanduser()
    if out.is_dir():
        out = out / "report.json"
    paths = report_paths(out)
    try:
        check_output_files(paths, lambda _: is_report(paths[0]), "fimtune eval report", "--out")
    except OutputRefused as e:
        raise EvalError(str(e)) from None
    try:
        corpus = open_corpus(cfg.corpus)
        available = corpus.examples(cfg.split)
    except CorpusReadError as e:
        raise EvalError(str(e)) from None
    if not available:
        raise EvalError(
            f"corpus {corpus.folder} has no {cfg.split} examples; rebuild it with a --test-fraction above 0"
        )
    return out, corpus, available


def _report(
    cfg: EvalConfig,
    corpus: Any,
    in_split: int,
    completions: int,
    evaluated: int,
    engine_info: dict[str, Any],
    spec: PromptSpec,
    timing: dict[str, float],
) -> dict[str, Any]:
    """The report's settings, corpus, engine, template and timing (the models' scores are added by run_eval)."""
    started, loaded, finished = timing["started"], timing["loaded"], timing["finished"]
    return {
        "fimtune_version": __version__,
        "settings": {k: v for k, v in asdict(cfg).items() if k != "fixed_text" or cfg.engine == "fixed"},
        "corpus": {
            "folder": str(corpus.folder),
            "manifest_sha256": corpus.manifest_sha256,
            "split": cfg.split,
            "examples_in_split": in_split,
            "examples_evaluated": evaluated,
        },
        "engine": engine_info,
        "template": {
            "name": spec.template.name,
            "source": f"{cfg.run}/fimtune.json"
            if spec.meta
            else ("--template" if cfg.template != "auto" else "detected"),
            "budgets": spec.budgets.to_dict(),
            "exact_token_counts": spec.tokenizer is not None,
        },
        "timing": {
            "seconds": round(finished - started, 3),
            "load_seconds": round(loaded - started, 3),
            "completions": completions,
            "completions_per_s": round(completions / max(finished - loaded, 1e-9), 3),
            "examples_per_s": round(evaluated / max(finished - loaded, 1e-9), 3),
        },
    }
