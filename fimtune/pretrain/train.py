"""The pretraining recipe, top to bottom: sources -> tokenizer -> FIM sequences -> packed rows -> model -> TRL."""

from __future__ import annotations

import copy
import csv
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM, Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from fimtune import __version__
from fimtune.config import from_dict, to_dict
from fimtune.models import ModelError, load_tokenizer, model_label, resolve_dtype
from fimtune.pretrain.config import PretrainConfig
from fimtune.pretrain.data import SourceError, collect, default_sources
from fimtune.pretrain.fim import build_sequences, pack, serving_template
from fimtune.pretrain.presets import Preset, get_preset, llama_config
from fimtune.pretrain.tokenizer import capped, train_bpe
from fimtune.tokenizer import save_tokenizer
from fimtune.train.config import TrainConfig
from fimtune.train.data import to_dataset
from fimtune.train.sft import CHECKPOINTS, Guard, fit, peak_memory_mib, sft_config

log = logging.getLogger(__name__)

RUN_CONFIG = "pretrain_config.json"
REPORT = "pretrain_report.json"
CURVE = "loss_curve"
INITIAL_EVAL = "initial_eval.json"
MODEL = "model"
DATA = "data"
DATA_MANIFEST = "data_manifest.json"
PRESET_FILE = "fimtune_preset.json"  # also written by the `tiny` preset: marks a model fimtune built itself
# Dense bf16 peak of GPUs, for MFU (matched against torch.cuda.get_device_name()).
PEAK_BF16_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


class PretrainError(Exception):
    """Pretraining cannot start or went wrong; the message says what to do. Checkpoints written stay."""


@dataclass
class PretrainResult:
    out: Path
    model: Path
    report: dict[str, Any]


class _Deadline(TrainerCallback):
    """Stops training (with an evaluation and a checkpoint) so that the whole call ends by the deadline.

    Before each step it keeps room for one more step, one evaluation and one checkpoint save.
    """

    def __init__(self, deadline: float | None, eval_s: float) -> None:
        self.deadline = deadline
        self.eval_s = eval_s
        self.step_s = 0.0
        self.t0 = 0.0
        self.stopped = False

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.t0 = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        dt = time.perf_counter() - self.t0
        self.step_s = dt if not self.step_s else 0.8 * self.step_s + 0.2 * dt
        if state.global_step >= args.max_steps:
            control.should_log = True  # the last step's loss ends the curve
        if self.deadline is None or control.should_training_stop:
            return
        reserve = 2 * self.step_s + 2 * self.eval_s + 10.0
        if time.perf_counter() + reserve >= self.deadline:
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = True
            control.should_log = True
            self.stopped = True

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stopped:
            log.info("time limit: stopped at step %d of %d; continue with --resume", state.global_step, args.max_steps)


# ---------------------------------------------------------------------------------------------------------------
# Data


def _collect(cfg: PretrainConfig, sources: list[Any], template: Any) -> tuple[Any, dict[str, Any]]:
    """The permissively licensed sources, split into train and held-out packages, and their manifest."""
    try:
        collected = collect(
            sources,
            cfg.node_modules,
            holdout=cfg.holdout,
            holdout_count=cfg.holdout_count,
            max_bytes=int(cfg.max_data_mb * 1e6),
            max_package_bytes=int(cfg.max_package_mb * 1e6),
            seed=cfg.seed,
            forbidden=template.tokens(),
        )
    except SourceError as e:
        raise PretrainError(str(e)) from None
    settings = {
        "max_data_mb": cfg.max_data_mb,
        "max_package_mb": cfg.max_package_mb,
        "holdout": cfg.holdout,
        "holdout_count": cfg.holdout_count,
    }
    manifest = collected.manifest(sources, cfg.node_modules, settings)
    if not collected.heldout:
        raise PretrainError(
            "the held-out packages have no usable source file; hold out others with --holdout NAME[,NAME...]"
        )
    totals = manifest["totals"]
    log.info(
        "data: %d train files (%.1f MB) from %d packages, %d held-out files from %s; %d packages skipped",
        totals["files_train"],
        totals["bytes_train"] / 1e6,
        totals["packages_train"],
        totals["files_heldout"],
        ", ".join(manifest["heldout"]),
        totals["packages_skipped"],
    )
    return collected, manifest


def prepare_data(cfg: PretrainConfig, preset: Preset, out: Path) -> dict[str, Any]:
    """Collect sources, train the tokenizer (saved into <out>/model), build FIM sequences and pack rows into
    <out>/data/{train,heldout}.npy; returns the data manifest (also written to <out>/data/data_manifest.json)."""
    template = serving_template(cfg.fim)
    started = time.perf_counter()
    sources = cfg.sources or default_sources()
    collected, manifest = _collect(cfg, sources, template)

    texts = [d.text for d in collected.train]
    random.Random(cfg.seed).shuffle(texts)
    t = time.perf_counter()
    if cfg.init_from:  # the starting model's tokenizer: its embeddings are trained for these ids
        tok = Tokenizer.from_file(str(Path(cfg.init_from) / "tokenizer.json"))
        log.info("tokenizer: %d tokens, from %s", tok.get_vocab_size(), cfg.init_from)
    else:
        tok = train_bpe(capped(texts, int(cfg.tokenizer_mb * 1e6)), cfg.vocab_size, template)
        log.info("tokenizer: %d tokens trained in %.1fs", tok.get_vocab_size(), time.perf_counter() - t)
    save_tokenizer(tok, out / MODEL, template, model_max_length=cfg.seq_len)

    chunk_chars = cfg.seq_len * 3
    train_seqs = build_sequences(collected.train, template, tok, cfg.fim, seed=cfg.seed, chunk_chars=chunk_chars)
    held_seqs = build_sequences(collected.heldout, template, tok, cfg.fim, seed=cfg.seed, chunk_chars=chunk_chars)
    train_rows = pack(train_seqs.ids, cfg.seq_len, cfg.seed)
    held_rows = pack(held_seqs.ids, cfg.seq_len, cfg.seed, max_rows=cfg.eval_rows)
    if len(train_rows) < cfg.rows_per_batch or not len(held_rows):
        raise PretrainError(
            f"too little data for rows of {cfg.seq_len} tokens ({len(train_rows)} train rows, {len(held_rows)} "
            "held-out rows): add sources, raise --max-data-mb, hold out bigger packages or lower --seq-len"
        )
    data = out / DATA
    data.mkdir(parents=True, exist_ok=True)
    np.save(data / "train.npy", train_rows)
    np.save(data / "heldout.npy", held_rows)
    train_tokens = sum(len(s) for s in train_seqs.ids)
    manifest["tokens"] = {
        "vocab_size": tok.get_vocab_size(),
        "tokenizer_trained_on_mb": None
        if cfg.init_from
        else round(min(sum(len(x) for x in texts), cfg.tokenizer_mb * 1e6) / 1e6, 3),
        "tokenizer_from": model_label(cfg.init_from) if cfg.init_from else None,
        "train_tokens": train_tokens,
        "heldout_tokens": sum(len(s) for s in held_seqs.ids),
        "bytes_per_token": round(manifest["totals"]["bytes_train"] / max(train_tokens, 1), 3),
        "train_rows": len(train_rows),
        "heldout_rows": len(held_rows),
        "seq_len": cfg.seq_len,
        "chunks": {"train": train_seqs.chunks, "heldout": held_seqs.chunks},
        "modes": {"train": train_seqs.modes, "heldout": held_seqs.modes},
        "with_context": {"train": train_seqs.with_context, "heldout": held_seqs.with_context},
    }
    manifest["fim"] = to_dict(cfg.fim)
    manifest["elapsed_s"] = round(time.perf_counter() - started, 2)
    (data / DATA_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# Run folder


def _start(cfg: PretrainConfig) -> tuple[PretrainConfig, Path, str | None]:
    """The effective config (saved on a fresh run, read back on --resume), the run folder, the checkpoint."""
    out = Path(cfg.out).expanduser()
    saved = out / RUN_CONFIG
    if cfg.resume:
        if not saved.exists():
            raise PretrainError(f"--resume: {out} holds no pretraining run ({RUN_CONFIG} is missing)")
        ckpts = out / CHECKPOINTS
        last = get_last_checkpoint(str(ckpts)) if ckpts.is_dir() else None
        if last is None:
            raise PretrainError(f"--resume: {ckpts} holds no checkpoint; start again without --resume")
        prior = from_dict(PretrainConfig, json.loads(saved.read_text(encoding="utf-8")), str(saved))
        # Only how long this call may run and the threads it uses change across calls; the rest is the run's.
        eff = from_dict(PretrainConfig, {**to_dict(prior), "max_minutes": cfg.max_minutes, "threads": cfg.threads})
        eff.resume = True
        done = json.loads((Path(last) / "trainer_state.json").read_text(encoding="utf-8")).get("global_step", 0)
        if done >= eff.max_steps:
            raise PretrainError(f"{out} has finished its {eff.max_steps} steps; the model is in {out / MODEL}")
        return eff, out, last
    eff = cfg.effective()
    if saved.exists() or (out / CHECKPOINTS).exists():
        raise PretrainError(f"{out} already holds a pretraining run; pass --resume to continue it, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(to_dict(eff), indent=2) + "\n", encoding="utf-8")
    return eff, out, None


def pretrain_args(cfg: PretrainConfig, out: Path, bf16: bool) -> Any:
    """The trainer's settings for a pretraining run: fimtune train's, with pretraining's own choices."""
    tc = TrainConfig(
        corpus=str(out / DATA),
        base_model=cfg.preset,
        out=str(out),
        max_steps=cfg.max_steps,
        lr=cfg.lr,
        lr_scheduler="cosine",
        warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        seq_len=cfg.seq_len,
        batch_tokens=cfg.batch_tokens,
        grad_accum=cfg.grad_accum,
        eval_steps=cfg.eval_steps,
        logging_steps=cfg.logging_steps,
        save_total_limit=2,
        seed=cfg.seed,
    )
    return sft_config(
        tc,
        out,
        torch.cuda.is_available(),
        has_eval=True,
        packed=False,
        bf16=bf16,
        load_best_model_at_end=False,  # pretraining keeps the last weights (the cosine schedule's end)
        train_sampling_strategy="random",  # rows all have seq_len tokens: nothing to group by length
        adam_beta2=0.95,
    )


def pretrain_trainer(
    model: Any, args: Any, train_rows: np.ndarray, held_rows: np.ndarray, tokenizer: Any, callbacks: list[Any]
) -> Trainer:
    """The plain transformers Trainer with the model's own cross-entropy over every token of fixed-length rows.
    Not TRL's SFTTrainer: its chunked log-prob head saves memory for large vocabularies on a GPU, but it cost a
    CPU run of an 8k-vocabulary model 2.5x in tokens/s (benchmarks/pretrain_throughput.py measures both against
    a bare training loop)."""
    return Trainer(
        model=model,
        args=args,
        data_collator=rows_collator,
        train_dataset=to_dataset({"input_ids": train_rows}),
        eval_dataset=to_dataset({"input_ids": held_rows}),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def rows_collator(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Fixed-length packed rows -> a batch whose labels are its input ids (loss on every token; the model shifts)."""
    ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
    return {"input_ids": ids, "labels": ids}


def vocab_id(tokenizer: Any, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(tid, int):
        raise PretrainError(f"token {token!r} is missing from the tokenizer in the run folder; start a new run")
    return tid


def probe_max_steps(model: Any, rows: np.ndarray, cfg: PretrainConfig, bf16: bool, steps: int = 6) -> tuple[int, float]:
    """(max_steps, seconds per optimizer step): how many steps fit cfg.train_minutes, timed on a copy of the model
    with plain AdamW steps on real rows (in the run's dtype), plus the evaluations every eval_steps (a forward
    pass costs about a third of a training step)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    probe = copy.deepcopy(model).to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-5)
    batch = torch.from_numpy(rows[: cfg.rows_per_batch].astype(np.int64)).to(device)
    start = 0.0
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = probe(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / steps * cfg.grad_accum
    del probe, opt
    eval_s = step_s / 3 * max(1, cfg.eval_rows // cfg.rows_per_batch) / cfg.grad_accum
    per_step = step_s * 1.1 + eval_s / cfg.eval_steps  # 10%: the trainer's own work per step
    return max(1, int(cfg.train_minutes * 60 / per_step)), step_s


def flops_per_token(preset: Preset, params: int, vocab: int, seq_len: int) -> float:
    """Training FLOPs per token (PaLM's estimate): 6 x matmul parameters + 12 x layers x hidden x sequence length.
    The input embedding is a lookup, not a matmul; a tied head still multiplies by it."""
    matmul = params - vocab * preset.hidden_size + (vocab * preset.hidden_size if preset.tie_embeddings else 0)
    return 6.0 * matmul + 12.0 * preset.num_layers * preset.hidden_size * seq_len


def _peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def _curves(log_history: list[dict[str, Any]], initial: dict[str, Any] | None, tokens_per_step: int) -> dict[str, Any]:
    train = [
        {"step": h["step"], "tokens": h["step"] * tokens_per_step, "loss": h["loss"]}
        for h in log_history
        if "loss" in h
    ]
    evals = [
        {"step": h["step"], "tokens": h["step"] * tokens_per_step, "eval_loss": h["eval_loss"]}
        for h in log_history
        if "eval_loss" in h
    ]
    if initial is not None:
        evals.insert(0, {"step": 0, "tokens": 0, "eval_loss": initial["eval_loss"]})
    seen: set[int] = set()
    evals = [e for e in evals if not (e["step"] in seen or seen.add(e["step"]))]  # type: ignore[func-returns-value]
    return {"train": train, "heldout": evals}


def write_curves(out: Path, curves: dict[str, Any], title: str) -> None:
    """<out>/loss_curve.json, .csv (step, tokens, split, loss) and .png."""
    (out / f"{CURVE}.json").write_text(json.dumps(curves, indent=2) + "\n", encoding="utf-8")
    with (out / f"{CURVE}.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["step", "tokens", "split", "loss"])
        for row in curves["train"]:
            w.writerow([row["step"], row["tokens"], "train", row["loss"]])
        for row in curves["heldout"]:
            w.writerow([row["step"], row["tokens"], "heldout", row["eval_loss"]])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["tokens"] for r in curves["train"]], [r["loss"] for r in curves["train"]], label="train")
    ax.plot(
        [r["tokens"] for r in curves["heldout"]],
        [r["eval_loss"] for r in curves["heldout"]],
        marker="o",
        label="held-out packages",
    )
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{CURVE}.png", dpi=100)
    plt.close(fig)


def save_model(model: Any, folder: Path, preset: Preset, end_id: int, pad_id: int) -> list[str]:
    """Write the weights in the preset's dtype, in shards of at most preset.max_shard_bytes; returns the files."""
    for old in list(folder.glob("model*.safetensors")) + list(folder.glob("model.safetensors.index.json")):
        old.unlink()
    dtype = getattr(torch, preset.save_dtype)
    to_save = copy.deepcopy(model).to(dtype) if dtype != next(model.parameters()).dtype else model
    to_save.config.use_cache = True
    to_save.generation_config.eos_token_id = end_id
    to_save.generation_config.pad_token_id = pad_id
    to_save.save_pretrained(str(folder), max_shard_size=preset.max_shard_bytes)
    return sorted(p.name for p in folder.iterdir())


ARCHITECTURE = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
)


def warm_start(folder: Path, config: Any) -> LlamaForCausalLM:
    """The model in `folder` as fp32 master weights, checked to have the preset's architecture (`config`);
    positions up to the new row length."""
    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    differ = [
        f"{k} {getattr(model.config, k)} (preset: {getattr(config, k)})"
        for k in ARCHITECTURE
        if getattr(model.config, k) != getattr(config, k)
    ]
    if differ:
        raise PretrainError(f"--init-from {folder}: not the preset's architecture: {', '.join(differ)}")
    model.config.max_position_embeddings = config.max_position_embeddings
    return model


def init_provenance(folder: str) -> dict[str, Any] | None:
    """What the starting model of a warm-started run had been trained on (its own fimtune_preset.json)."""
    if not folder:
        return None
    path = Path(folder) / PRESET_FILE
    prior = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return {"model": model_label(folder), "trained": prior.get("trained"), "heldout_loss": prior.get("heldout_loss")}


# ---------------------------------------------------------------------------------------------------------------
# The recipe


def _model(cfg: PretrainConfig, preset: Preset, vocab: int, end_id: int, pad_id: int) -> tuple[Any, str]:
    """The preset's Llama (seeded weights, or those of --init-from) and the compute dtype."""
    try:
        dtype = resolve_dtype(cfg.dtype, "cuda" if torch.cuda.is_available() else "cpu")
    except ModelError as e:
        raise PretrainError(str(e)) from None
    torch.manual_seed(cfg.seed)
    config = llama_config(preset, vocab, end_id, pad_id, seq_len=cfg.seq_len)
    model = LlamaForCausalLM(config) if not cfg.init_from else warm_start(Path(cfg.init_from), config)
    return model, dtype


def _report(
    trainer: Any,
    result: Any,
    guard: Guard,
    stopper: _Deadline,
    cfg: PretrainConfig,
    run: dict[str, Any],
    curves: dict[str, Any],
    tokens_per_step: int,
    manifest: dict[str, Any],
    files: Any,
) -> dict[str, Any]:
    """pretrain_report.json: steps, throughput, MFU, losses, memory, data; `run` holds the preset, the parameter
    and vocabulary counts, the compute dtype and the start time."""
    preset, params, vocab, dtype, started = (run[k] for k in ("preset", "params", "vocab", "dtype", "started"))
    on_gpu = torch.cuda.is_available()
    state = trainer.state
    seconds = float(result.metrics.get("train_runtime", 0.0)) or 1e-9
    call_tokens = state.num_input_tokens_seen - guard.start_tokens
    tps = call_tokens / seconds
    fpt = flops_per_token(preset, params, vocab, cfg.seq_len)
    peak = _peak_flops()
    finished = state.global_step >= cfg.max_steps
    peak_mem, peak_kind = peak_memory_mib(on_gpu)
    return {
        "preset": preset.name,
        "params": params,
        "vocab_size": vocab,
        "steps": state.global_step,
        "max_steps": cfg.max_steps,
        "finished": finished,
        "stopped_by_time_limit": stopper.stopped,
        "seq_len": cfg.seq_len,
        "tokens_per_step": tokens_per_step,
        "tokens_seen": state.global_step * tokens_per_step,
        "call_tokens": call_tokens,
        "call_train_runtime_s": round(seconds, 2),
        "tokens_per_s": round(tps, 1),
        "flops_per_token": fpt,
        "mfu": round(tps * fpt / peak, 4) if peak else None,
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "torch_threads": torch.get_num_threads(),
        "dtype": "bf16 autocast, fp32 weights" if dtype == "bf16" else "fp32",
        "heldout_loss_start": curves["heldout"][0]["eval_loss"] if curves["heldout"] else None,
        "heldout_loss_end": curves["heldout"][-1]["eval_loss"] if curves["heldout"] else None,
        "train_loss_end": curves["train"][-1]["loss"] if curves["train"] else None,
        "eval_s": round(stopper.eval_s, 2),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "peak_memory_mib": round(peak_mem, 1),
        "peak_memory_kind": peak_kind,
        "data": {"totals": manifest["totals"], "tokens": manifest["tokens"], "heldout": manifest["heldout"]},
        "model_files": files,
    }


def _write_provenance(
    model_dir: Path, cfg: PretrainConfig, preset: Preset, report: dict[str, Any], manifest: dict[str, Any]
) -> None:
    """fimtune_preset.json beside the weights: what the model is, how long it trained, on what data."""
    provenance = {
        "preset": preset.to_dict(),
        "template": serving_template(cfg.fim).name,
        "params": report["params"],
        "trained": {k: report[k] for k in ("steps", "max_steps", "finished", "tokens_seen")},
        "heldout_loss": {"start": report["heldout_loss_start"], "end": report["heldout_loss_end"]},
        "heldout_packages": manifest["heldout"],
        "licences_used": manifest["licences_used"],
        "fim": manifest["fim"],
        "init_from": init_provenance(cfg.init_from),
        "seed": cfg.seed,
        "fimtune_version": __version__,
    }
    (model_dir / PRESET_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")


def pretrain(cfg: PretrainConfig, *, callbacks: list[TrainerCallback] | None = None) -> PretrainResult:
    """Run `fimtune pretrain`; returns the model folder and the report. Raises PretrainError on bad input."""
    started = time.perf_counter()
    cfg, out, resume_from = _start(cfg)
    deadline = started + cfg.max_minutes * 60 if cfg.max_minutes else None
    preset = get_preset(cfg.preset)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    template = serving_template(cfg.fim)
    model_dir = out / MODEL

    # 1. Data and tokenizer (built once per run folder; a resumed run reads them back).
    data = out / DATA
    if not (data / "heldout.npy").exists():
        manifest = prepare_data(cfg, preset, out)
    else:
        manifest = json.loads((data / DATA_MANIFEST).read_text(encoding="utf-8"))
    train_rows = np.load(data / "train.npy")
    held_rows = np.load(data / "heldout.npy")
    tokenizer = load_tokenizer(model_dir)
    tokenizer.pad_token = template.pad
    vocab = len(tokenizer)
    end_id, pad_id = (vocab_id(tokenizer, t) for t in (template.end, template.pad or template.end))

    # 2. Model from the preset, weights from the seed; bf16 autocast (fp32 master weights) where the device has it.
    model, dtype = _model(cfg, preset, vocab, end_id, pad_id)
    params = sum(p.numel() for p in model.parameters())
    log.info("model: preset %s, %.2fM parameters, vocab %d, %s", preset.name, params / 1e6, vocab, dtype)
    if cfg.train_minutes and resume_from is None:  # sized once: a resumed run keeps its schedule
        cfg.max_steps, step_s = probe_max_steps(model, train_rows, cfg, bf16=dtype == "bf16")
        (out / RUN_CONFIG).write_text(json.dumps(to_dict(cfg), indent=2) + "\n", encoding="utf-8")
        log.info("schedule: %d steps of %.2fs fit the training time asked for", cfg.max_steps, step_s)

    # 3. Trainer: fimtune train's settings; full training on every token of fixed-length rows.
    args = pretrain_args(cfg, out, bf16=dtype == "bf16")
    guard = Guard()
    stopper = _Deadline(deadline, eval_s=0.0)
    trainer = pretrain_trainer(model, args, train_rows, held_rows, tokenizer, [guard, stopper, *(callbacks or [])])

    # 4. Held-out loss before any training (a fresh run), which also times one evaluation for the deadline.
    initial_path = out / INITIAL_EVAL
    if resume_from is None:
        initial_path.write_text(json.dumps(trainer.evaluate(), indent=2) + "\n", encoding="utf-8")
    stopper.eval_s = float(json.loads(initial_path.read_text(encoding="utf-8")).get("eval_runtime", 0.0))

    # 5. Train.
    result = fit(
        trainer,
        resume_from,
        PretrainError,
        f"at --seq-len {cfg.seq_len}, --batch-tokens {cfg.batch_tokens}; lower --batch-tokens and raise --grad-accum; "
        f"continue with --resume from {out / CHECKPOINTS}",
        f"lower --lr (now {cfg.lr}); checkpoints so far are in {out / CHECKPOINTS}",
    )

    # 6. Save the model (preset dtype, shards), its provenance, the curves and the report.
    initial = json.loads(initial_path.read_text(encoding="utf-8")) if initial_path.exists() else None
    tokens_per_step = cfg.rows_per_batch * cfg.seq_len * cfg.grad_accum * args.world_size
    curves = _curves(trainer.state.log_history, initial, tokens_per_step)
    files = save_model(trainer.model, model_dir, preset, end_id, pad_id)
    shutil.copyfile(data / DATA_MANIFEST, model_dir / DATA_MANIFEST)
    run = {"preset": preset, "params": params, "vocab": vocab, "dtype": dtype, "started": started}
    report = _report(trainer, result, guard, stopper, cfg, run, curves, tokens_per_step, manifest, files)
    _write_provenance(model_dir, cfg, preset, report, manifest)
    write_curves(out, curves, f"fimtune pretrain --preset {preset.name} ({params / 1e6:.1f}M parameters)")
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return PretrainResult(out=out, model=model_dir, report=report)
