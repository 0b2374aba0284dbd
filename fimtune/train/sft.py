"""The training recipe, top to bottom: corpus -> base model -> render + pack -> LoRA SFT (TRL) -> adapter + metadata."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer

from fimtune import CORPUS_FORMAT_VERSION, __version__
from fimtune.config import to_dict
from fimtune.fim_format import FORMAT_VERSION, IGNORE_INDEX, FimFormatError, FimTemplate
from fimtune.models import (
    LoadedModel,
    ModelError,
    check_vocab_fits,
    context_limit,
    load_base_model,
    load_tokenizer,
    merge_adapter,
    model_type_of,
    pick_attention,
    resolve_base_model,
    resolve_dtype,
)
from fimtune.outputs import OutputRefused, check_output_folder
from fimtune.prompting import resolve_prompt
from fimtune.run_meta import RunMeta, write_run_meta
from fimtune.train.config import TrainConfig
from fimtune.train.data import TokenMeter, load_corpus, render_examples, sample, split_validation, to_dataset
from fimtune.train.model import lora_config

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
REPORT = "train_report.json"
MERGED = "merged"


class TrainError(Exception):
    """Training cannot start or went wrong; the message says what to change. Checkpoints written stay."""


class NonFiniteLoss(Exception):
    """Raised from inside the training loop when the logged loss is NaN or infinite."""


class Guard(TrainerCallback):
    """Stops the run on a NaN/inf loss; remembers where the run started."""

    def __init__(self) -> None:
        self.start_step = 0
        self.start_tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start_step = state.global_step
        self.start_tokens = state.num_input_tokens_seen

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps:
            control.should_log = True  # the last step's loss ends the curve, however short the run

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        for key in ("loss", "eval_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                raise NonFiniteLoss(f"the {key.replace('_', ' ')} became {value} at step {state.global_step}")


@dataclass
class TrainResult:
    out: Path
    adapter: Path
    report: dict[str, Any]
    meta: RunMeta
    merged: Path | None


def peak_memory_mib(on_gpu: bool) -> tuple[float, str]:
    if on_gpu:
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` is fimtune's own: a finished run (fimtune.json, the adapter) or its checkpoints."""
    return any((folder / name).exists() for name in ("fimtune.json", "adapter_config.json", CHECKPOINTS))


def _check_run_folder(out: Path, resume: bool, corpus: str) -> str | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to train over an existing run, and to
    write into a folder that is not a run (a file, a folder of the user's, the home folder, the corpus)."""
    try:
        check_output_folder(out, is_run_folder, "fimtune run", inputs=[Path(corpus)])
    except OutputRefused as e:
        raise TrainError(str(e)) from None
    ckpts = out / CHECKPOINTS
    last = get_last_checkpoint(str(ckpts)) if ckpts.is_dir() else None
    if resume:
        if last is None:
            raise TrainError(f"--resume: {ckpts} holds no checkpoint to continue from; run without --resume")
        if (out / "fimtune.json").exists():
            raise TrainError(
                f"--resume: {out} is a finished run (it has its fimtune.json); to train longer, start a new run "
                "with more --max-steps or --epochs"
            )
        return last
    if last is not None or (out / "adapter_config.json").exists():
        raise TrainError(f"{out} already holds a training run; pass --resume to continue it, or choose another --out")
    return None


# Settings a resumed run may change: they do not decide its data, model or optimizer (a longer --max-steps or
# --epochs goes on along the schedule they give; the corpus is compared by its manifest, not by its path).
_RESUMABLE = frozenset(
    {"corpus", "out", "resume", "merge", "max_steps", "epochs", "eval_steps", "logging_steps", "save_total_limit"}
)
STARTED = "started.json"  # in checkpoints/: the settings a run began with, which --resume must keep


def _match_started_run(out: Path, cfg: TrainConfig, manifest_sha256: str, resume_from: str | None) -> None:
    """A fresh run records its settings and its corpus; a resumed one must have the same (a checkpoint restores
    the schedule, the data order and the adapter's shape: other settings would fail to load or train other data)."""
    started = out / CHECKPOINTS / STARTED
    now = {k: v for k, v in to_dict(cfg).items() if k not in _RESUMABLE} | {"corpus_manifest_sha256": manifest_sha256}
    if resume_from is None:
        started.parent.mkdir(parents=True, exist_ok=True)
        started.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return
    try:
        before = json.loads(started.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # a run from before this record: nothing to compare with
    changed = [k for k in sorted(now.keys() | before.keys()) if now.get(k) != before.get(k)]
    if changed:
        what = "; ".join(
            "the corpus (its manifest)" if k == "corpus_manifest_sha256" else f"{k} {before.get(k)!r} -> {now.get(k)!r}"
            for k in changed
        )
        raise TrainError(
            f"--resume: {out} was started with other settings ({what}); resume with the settings it began with "
            f"(recorded in {started}) or start a new run"
        )


def padding_free(cfg: TrainConfig, attention: str) -> bool:
    """Padding-free packing when asked, or (auto) when the attention kernel is varlen (flash_attention_2).

    sdpa and eager handle a packed row correctly (transformers builds a block-diagonal mask from the position
    ids), but they attend over the whole flat row: on them padded, length-grouped batches are faster.
    """
    return cfg.packing == "padding_free" or (cfg.packing == "auto" and attention == "flash_attention_2")


def sft_config(
    cfg: TrainConfig, out: Path, on_gpu: bool, has_eval: bool, packed: bool, bf16: bool, **overrides: Any
) -> SFTConfig:
    """TRL's settings for this run (everything TrainConfig leaves to the trainer stays at TRL's default);
    `bf16`: autocast with fp32 master weights (CPU or GPU); `overrides` replace any of them (pretraining's own
    choices)."""
    eval_steps = min(cfg.eval_steps, cfg.max_steps) if cfg.max_steps else cfg.eval_steps
    settings: dict[str, Any] = dict(
        output_dir=str(out / CHECKPOINTS),
        max_steps=cfg.max_steps or -1,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.rows_per_batch,
        per_device_eval_batch_size=cfg.rows_per_batch,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=bf16,
        use_cpu=not on_gpu,  # also makes torchrun/accelerate processes on CPU join one gloo group
        fp16=False,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        max_length=cfg.seq_len,
        packing=packed,
        packing_strategy="bfd",
        padding_free=packed,
        train_sampling_strategy="random" if packed else "group_by_length",
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,
        include_num_input_tokens_seen="all",
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        disable_tqdm=not os.isatty(2),
    )
    settings.update(overrides)
    return SFTConfig(**settings)


def train(cfg: TrainConfig, *, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Run `fimtune train`: returns where the adapter is and the report. Raises TrainError on bad input."""
    started = time.perf_counter()
    cfg.validate()
    out = Path(cfg.out).expanduser()
    resume_from = _check_run_folder(out, cfg.resume, cfg.corpus)

    # 1. Corpus.
    corpus = load_corpus(cfg.corpus)
    _match_started_run(out, cfg, corpus.manifest_sha256, resume_from)

    # 2. Base model's tokenizer and template: never add tokens to it.
    base_path, tokenizer, template = _base_and_template(cfg)

    # 3. Data: rendered through the shared prompt layer, labels on the middle and the end token only.
    budgets = cfg.budgets()
    # The best checkpoint is chosen on whole training files held out (validation), never on the test split that
    # `fimtune eval` then reports on: that would favour the tuned model on the very examples it is scored on.
    train_examples, validation = split_validation(corpus.train, cfg.eval_examples, cfg.seed)
    train_cols, train_stats = render_examples(
        sample(train_examples, cfg.max_train_examples, cfg.seed), template, tokenizer, budgets
    )
    if not train_stats.kept:
        raise TrainError(f"no training example of {corpus.folder} has a middle left after rendering; raise --seq-len")
    eval_cols, eval_stats = render_examples(validation, template, tokenizer, budgets)
    has_eval = eval_stats.kept > 0
    if not has_eval:
        log.warning(
            "corpus %s has too few training files to hold some out for validation: no evaluation loss, the last "
            "checkpoint is kept",
            corpus.folder,
        )

    # 4-5. Model (dtype, quantization, attention) and TRL's SFTTrainer, which adds LoRA.
    end_id = tokenizer.convert_tokens_to_ids(template.end)
    setup = _trainer(cfg, out, base_path, tokenizer, train_cols, eval_cols if has_eval else None, callbacks, end_id)
    trainer = setup.trainer

    # 6. Train.
    result = fit(
        trainer,
        resume_from,
        TrainError,
        f"at --seq-len {cfg.seq_len}, --batch-tokens {cfg.batch_tokens}; try --quantize 4bit, a shorter --seq-len, "
        "fewer --batch-tokens (with more --grad-accum) or --gradient-checkpointing; "
        f"checkpoints written so far are in {out / CHECKPOINTS}",
        f"lower --lr (now {cfg.lr}) or check the data; checkpoints written so far are in {out / CHECKPOINTS}",
    )

    # 7. Save: the PEFT adapter (best checkpoint when there is an eval split), metadata, report.
    trainer.save_model(str(out))
    render_stats = {"train": train_stats.to_dict(), "validation": eval_stats.to_dict()}
    report = _report(setup, out, float(result.metrics.get("train_runtime", 0.0)), started, render_stats)
    meta = RunMeta(
        base_model=cfg.base_model,
        template=template.name,
        fim_format_version=FORMAT_VERSION,
        budgets=budgets.to_dict(),
        context=dict(corpus.manifest.get("config", {}).get("context", {})),
        seq_len=cfg.seq_len,
        corpus=str(corpus.folder),
        corpus_manifest_sha256=corpus.manifest_sha256,
        corpus_format_version=CORPUS_FORMAT_VERSION,
        base_model_path=str(base_path),
        model_type=model_type_of(base_path),
        train=to_dict(cfg),
        fimtune_version=__version__,
    )  # what eval and serve read back: the prompt choices this adapter was trained with
    merged: Path | None = None
    if trainer.is_world_process_zero():
        if cfg.merge:
            merged = merge_adapter(base_path, out, out / MERGED, tokenizer)
            meta.merged = MERGED
        write_run_meta(out, meta)
        (out / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return TrainResult(out=out, adapter=out / "adapter_model.safetensors", report=report, meta=meta, merged=merged)


def _base_and_template(cfg: TrainConfig) -> tuple[Path, Any, FimTemplate]:
    """The base model's folder, its tokenizer (a pad token set from its own vocabulary) and the template; the row
    length resolved against the base's context limit."""
    base_path = resolve_base_model(cfg.base_model)
    limit = context_limit(base_path)
    cfg.seq_len = cfg.resolved_seq_len(limit)
    cfg.validate()  # again, with the row length known
    if limit is not None and cfg.seq_len > limit:
        raise TrainError(
            f"--seq-len {cfg.seq_len} is longer than base model {cfg.base_model} takes ({limit} tokens, "
            f"{base_path / 'config.json'}); use --seq-len {limit} or less"
        )
    tokenizer = load_tokenizer(base_path)
    try:
        template = resolve_prompt(base_model=base_path, template=cfg.template, tokenizer=tokenizer).template
    except FimFormatError as e:
        raise TrainError(str(e)) from None
    if tokenizer.pad_token is None:  # an existing token, never a new one
        tokenizer.pad_token = template.pad or tokenizer.eos_token or template.end
    log.info("template %s (%s)%s", template.name, template.family, " detected" if cfg.template == "auto" else "")
    return base_path, tokenizer, template


@dataclass
class _Setup:
    trainer: SFTTrainer
    guard: Guard
    meter: TokenMeter
    loaded: LoadedModel
    args: SFTConfig
    compute: str
    packed: bool


def _trainer(
    cfg: TrainConfig,
    out: Path,
    base_path: Path,
    tokenizer: Any,
    train_cols: dict[str, list[Any]],
    eval_cols: dict[str, list[Any]] | None,
    callbacks: Sequence[TrainerCallback],
    end_id: int,
) -> _Setup:
    """The base model loaded for training and TRL's SFTTrainer around it: packed (padding-free, position ids)
    or grouped by length, LoRA added, tokens metered, the run guarded against a non-finite loss."""
    on_gpu = torch.cuda.is_available()
    attention = pick_attention(cfg.attention, on_gpu)
    packed = padding_free(cfg, attention)
    try:
        compute = resolve_dtype(cfg.dtype, "cuda" if on_gpu else "cpu")
    except ModelError as e:
        raise TrainError(str(e)) from None
    args = sft_config(cfg, out, on_gpu, eval_cols is not None, packed, bf16=compute == "bf16")
    loaded = load_base_model(
        base_path,
        quantize=cfg.quantize,
        attention=attention,
        gradient_checkpointing=cfg.gradient_checkpointing,
        device_index=args.local_process_index,
        compute=compute,
    )
    check_vocab_fits(loaded.model, tokenizer)
    guard = Guard()
    common: dict[str, Any] = dict(
        model=loaded.model,
        args=args,
        train_dataset=to_dataset(train_cols),
        eval_dataset=to_dataset(eval_cols) if eval_cols is not None else None,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
        callbacks=[guard, *callbacks],
    )
    if cfg.end_weight != 1.0:
        trainer: SFTTrainer = EndWeightedSFTTrainer(end_loss=end_weighted_loss(end_id, cfg.end_weight), **common)
    else:
        trainer = SFTTrainer(**common)
    meter = TokenMeter()
    step = trainer.training_step

    def metered(model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        meter.count(inputs)
        return step(model, inputs, *args, **kwargs)

    trainer.training_step = metered  # type: ignore[method-assign]
    return _Setup(trainer, guard, meter, loaded, args, compute, packed)


def end_weighted_loss(end_id: int, weight: float) -> Callable[..., torch.Tensor]:
    """Cross-entropy over the labelled tokens with the end token's weighted by `weight`, normalised like TRL's own
    loss (by the number of labelled tokens), so that at weight 1 it is the same loss.

    Why: with a token-mean loss, an example's decision to stop weighs one token against its middle's many, and an
    empty middle is nothing but that decision; tuning on a repository then teaches a small model to go on writing
    where the base would rightly stop. A weight above 1 gives stopping the share it has in what the editor shows.
    This path builds the full logits (TRL's default fuses the head with the loss): memory grows with the vocabulary.
    """

    def loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs.logits[:, :-1].float()
        target = labels[:, 1:].to(logits.device)
        mask = target != IGNORE_INDEX
        per_token = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.clamp(min=0).reshape(-1), reduction="none"
        ).view_as(target)
        weights = torch.where(target == end_id, weight, 1.0) * mask
        count = mask.sum() if num_items_in_batch is None else num_items_in_batch
        return (per_token * weights).sum() / torch.as_tensor(count, device=logits.device).clamp(min=1)

    return loss


class EndWeightedSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with `end_loss` (end_weighted_loss) as its loss, in training and in evaluation.

    One forward pass with the full logits; TRL's extra metrics (entropy, token accuracy) are not computed."""

    def __init__(self, *args: Any, end_loss: Callable[..., torch.Tensor], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.end_loss = end_loss

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
        loss = self.end_loss(outputs, inputs["labels"], num_items_in_batch=num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # As Trainer.compute_loss: the loss was divided by the tokens of every process, and DDP averages the
            # gradients over the processes, so it is multiplied back (without this, N processes train at 1/N).
            scale = self.accelerator.num_processes // self.get_tp_size()
            loss = loss * (scale if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss


def _report(setup: _Setup, out: Path, runtime_s: float, started: float, render: dict[str, Any]) -> dict[str, Any]:
    """train_report.json: steps, loss curves, throughput, memory, and how the model was run."""
    trainer, guard, meter, loaded, args = setup.trainer, setup.guard, setup.meter, setup.loaded, setup.args
    peft_model: Any = trainer.model
    trainable, total = peft_model.get_nb_trainable_parameters()
    on_gpu = torch.cuda.is_available()
    state = trainer.state
    seconds = runtime_s or 1e-9
    tokens = state.num_input_tokens_seen - guard.start_tokens
    peak, peak_kind = peak_memory_mib(on_gpu)
    return {
        "steps": state.global_step,
        "start_step": guard.start_step,
        "epochs": round(state.epoch or 0.0, 4),
        "loss_curve": [{"step": h["step"], "loss": h["loss"]} for h in state.log_history if "loss" in h],
        "eval_curve": [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in state.log_history if "eval_loss" in h],
        "best_checkpoint": os.path.relpath(state.best_model_checkpoint, out) if state.best_model_checkpoint else None,
        "best_eval_loss": state.best_metric,
        "train_runtime_s": round(seconds, 3),
        "wall_time_s": round(time.perf_counter() - started, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "real_tokens_per_s": round(tokens * meter.real_share / seconds, 1),
        "real_token_share": round(meter.real_share, 4),
        "tokens": meter.to_dict(),
        "peak_memory_mib": round(peak, 1),
        "peak_memory_kind": peak_kind,
        "device": loaded.device,
        "world_size": args.world_size,
        "dtype": loaded.dtype,
        "autocast": "bf16" if setup.compute == "bf16" else None,
        "attention": loaded.attention,
        "quantize": loaded.quantize,
        "packing": "padding-free (position ids)" if setup.packed else "length-grouped padded batches",
        "trainable_params": trainable,
        "total_params": total,
        "render": render,
    }


def fit(trainer: Any, resume_from: str | None, error: type[Exception], oom_hint: str, nan_hint: str) -> Any:
    """trainer.train, with the failures a user can act on as one-line errors of `error`: out of GPU memory
    (`oom_hint` says what to change) and a loss that is no longer finite (`nan_hint`)."""
    try:
        return trainer.train(resume_from_checkpoint=resume_from)
    except torch.OutOfMemoryError:
        raise error(f"CUDA out of memory {oom_hint}") from None
    except NonFiniteLoss as e:
        raise error(f"{e}; {nan_hint}") from None
