"""`fimtune train` on the tiny preset: loss mask through packing, overfitting, adapter vs base, resume, bad input."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from safetensors.torch import load_file  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from fimtune import CORPUS_FORMAT_VERSION  # noqa: E402
from fimtune.config import CorpusConfig, SpanConfig  # noqa: E402
from fimtune.corpus.pipeline import build_corpus  # noqa: E402
from fimtune.fim_format import FORMAT_VERSION, IGNORE_INDEX, TEMPLATES, Budgets  # noqa: E402
from fimtune.models import build_tiny_model, resolve_base_model  # noqa: E402
from fimtune.records import FimExample  # noqa: E402
from fimtune.run_meta import RunMeta, RunMetaError, read_run_meta, write_run_meta  # noqa: E402
from fimtune.tokenizer import byte_tokenizer_for  # noqa: E402
from fimtune.train.config import TrainConfig  # noqa: E402
from fimtune.train.data import TokenMeter, render_examples, to_dataset  # noqa: E402
from fimtune.train.sft import TrainError, train  # noqa: E402

# Two shared CPU cores: one intra-op thread is ~40x faster than two threads fighting over them.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "repos"


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fimtune-cache")
    old = os.environ.get("FIMTUNE_CACHE")
    os.environ["FIMTUNE_CACHE"] = str(folder)
    yield folder
    if old is None:
        del os.environ["FIMTUNE_CACHE"]
    else:
        os.environ["FIMTUNE_CACHE"] = old


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "c"
    cfg = CorpusConfig(
        repos=[str(FIXTURES / "pyshop"), str(FIXTURES / "gotool")],
        out=str(out),
        workers=1,
        test_fraction=0.5,
        spans=SpanConfig(examples_per_kb=4.0),
    )
    manifest = build_corpus(cfg, progress=False)
    assert manifest["counts"]["examples"]["train"] >= 4 and manifest["counts"]["examples"]["test"] >= 1
    return out


def small(corpus: Path, out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "corpus": str(corpus),
        "base_model": "tiny",
        "out": str(out),
        "seq_len": 256,
        "batch_tokens": 512,
        "max_middle_tokens": 64,
        "logging_steps": 1,
        "eval_examples": 4,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
    }
    base.update(kw)
    return TrainConfig(**base)


def examples() -> list[FimExample]:
    text = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
    cut = [(15, 32), (0, 0), (35, 35), (42, 51)]
    return [FimExample("x", "r", "m.py", "python", "line", text[:s], text[s:e], text[e:]) for s, e in cut] + [
        FimExample("y", "r", "m.py", "python", "random", "é" * 50, "ünïcode ✓", "z" * 10)
    ]


# --- data: the loss mask survives rendering, packing and collation ------------------------------------------


def supervised_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    prev = False
    for i, lab in zip(ids, labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == i
            if not prev:
                runs.append([])
            runs[-1].append(i)
        prev = lab != IGNORE_INDEX
    return runs


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_loss_mask_is_middle_and_end_token_through_packing_and_collation(name: str) -> None:
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    template = TEMPLATES[name]
    tok = byte_tokenizer_for(template)
    end_id = tok.token_to_id(template.end)
    exs = examples()
    cols, stats = render_examples(exs, template, tok, Budgets(max_tokens=256, max_middle_tokens=64))
    assert stats.kept == len(exs) and stats.middle_cut == 0
    want = [[*tok.encode(ex.middle, add_special_tokens=False).ids, end_id] for ex in exs]
    assert [supervised_runs(i, lab) for i, lab in zip(cols["input_ids"], cols["labels"], strict=True)] == [
        [w] for w in want
    ]

    # Padding-free packing, as SFTTrainer does it: best-fit rows, then one flat row with position ids.
    packed = pack_dataset(to_dataset(cols), 256, "bfd", {})
    meter = TokenMeter()
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([packed[i] for i in range(len(packed))])
    meter.count(batch)
    flat_ids, flat_labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    starts = [i for i, p in enumerate(batch["position_ids"][0].tolist()) if p == 0] + [len(flat_ids)]
    seqs = [(flat_ids[a:b], flat_labels[a:b]) for a, b in itertools.pairwise(starts)]
    assert sorted(tuple(map(tuple, supervised_runs(i, lab))) for i, lab in seqs) == sorted(((*w,),) for w in want)
    assert meter.real_share == 1.0 and meter.target == sum(map(len, want))

    # Padded batches: every row keeps its labels, padding is ignored and counted as not real.
    meter = TokenMeter()
    feats = [{"input_ids": i, "labels": lab} for i, lab in zip(cols["input_ids"], cols["labels"], strict=True)]
    batch = DataCollatorForLanguageModeling(pad_token_id=0)(feats)
    meter.count(batch)
    for row, f in enumerate(feats):
        n = len(f["input_ids"])
        assert batch["labels"][row, :n].tolist() == f["labels"]
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    assert meter.real == sum(len(f["input_ids"]) for f in feats) < meter.processed


def test_middle_longer_than_its_budget_teaches_no_end_token() -> None:
    template = TEMPLATES["fimtune"]
    tok = byte_tokenizer_for(template)
    ex = FimExample("x", "r", "m.py", "python", "block", "a = 1\n", "b = 2\n" * 40, "c = 3\n")
    cols, stats = render_examples([ex], template, tok, Budgets(max_tokens=128, max_middle_tokens=16))
    assert stats.middle_cut == 1
    assert tok.token_to_id(template.end) not in [x for x in cols["labels"][0] if x != IGNORE_INDEX]


def test_padding_free_only_where_attention_is_varlen() -> None:
    from fimtune.train.sft import padding_free

    cfg = TrainConfig()
    assert padding_free(cfg, "flash_attention_2") and not padding_free(cfg, "sdpa")
    cfg.packing = "padding_free"
    assert padding_free(cfg, "sdpa")
    cfg.packing = "padded"
    assert not padding_free(cfg, "flash_attention_2")


# --- the tiny preset ----------------------------------------------------------------------------------------


def test_tiny_preset_is_cached_deterministic_and_loads_like_any_model(cache: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_base_model("tiny")
    assert path.parent == cache / "models" and path.name.startswith("tiny-")
    assert resolve_base_model("tiny") == path
    again = build_tiny_model(tmp_path / "again")
    digest = [hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest() for p in (path, again)]
    assert digest[0] == digest[1]
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.convert_tokens_to_ids("<|fim_middle|>") == len(tok) - 5
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 2
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


# --- training ----------------------------------------------------------------------------------------------


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_tiny_overfits_and_only_the_adapter_changes(corpus: Path, tmp_path: Path) -> None:
    base = resolve_base_model("tiny")
    before = sha(base / "model.safetensors")
    out = tmp_path / "run"
    result = train(
        small(
            corpus, out, max_steps=40, lr=1e-2, max_train_examples=4, eval_steps=20, merge=True, packing="padding_free"
        )
    )
    losses = [p["loss"] for p in result.report["loss_curve"]]
    assert len(losses) == 40
    assert losses[0] > 5.0 and losses[-1] < 0.35 * losses[0], losses

    assert sha(base / "model.safetensors") == before
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero
    config = json.loads((out / "adapter_config.json").read_text())
    linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {m.rsplit(".", 1)[-1] for m in config["target_modules"]} == linear  # all linear layers, not lm_head
    merged = load_file(out / "merged" / "model.safetensors")
    original = load_file(base / "model.safetensors")
    assert not torch.equal(
        merged["model.layers.0.self_attn.q_proj.weight"], original["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(merged["model.embed_tokens.weight"], original["model.embed_tokens.weight"])

    report = json.loads((out / "train_report.json").read_text())
    assert report["packing"].startswith("padding-free") and report["real_token_share"] == 1.0
    assert report["tokens_per_s"] > 0 and report["peak_memory_mib"] > 0
    assert report["tokens"]["batches"] == 40  # the batches trained on
    # The best checkpoint by validation loss is kept, and it is the adapter the run folder holds.
    best = min(report["eval_curve"], key=lambda p: p["eval_loss"])
    assert len(report["eval_curve"]) == 2 and report["best_checkpoint"] == f"checkpoints/checkpoint-{best['step']}"
    assert (out / report["best_checkpoint"]).is_dir()
    kept = load_file(out / report["best_checkpoint"] / "adapter_model.safetensors")
    assert all(torch.equal(kept[k], adapter[k]) for k in adapter)
    meta = read_run_meta(out)
    assert meta.template == "fimtune" and meta.base_model == "tiny" and meta.merged == "merged"
    assert meta.budgets == Budgets(max_tokens=256, max_middle_tokens=64).to_dict()
    assert meta.corpus_manifest_sha256 == sha(corpus / "manifest.json")
    assert meta.context == json.loads((corpus / "manifest.json").read_text())["config"]["context"]


class Kill(TrainerCallback):
    """Simulates a kill right after a step (the checkpoint of the step before is on disk)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.at:
            raise KeyboardInterrupt


def test_the_report_counts_the_batches_trained_on(corpus: Path, tmp_path: Path) -> None:
    """A run that ends inside an epoch: the data loader has collated the next batch already, which is not
    trained on and not counted."""
    result = train(small(corpus, tmp_path / "run", max_steps=2, batch_tokens=256))
    assert result.report["steps"] == 2 and result.report["epochs"] < 1.0
    assert result.report["tokens"]["batches"] == 2


@pytest.mark.slow
def test_resume_continues_from_the_saved_step(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = small(corpus, out, max_steps=4, eval_steps=2, lr=1e-2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[Kill(3)])
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "adapter_model.safetensors").exists()
    with pytest.raises(TrainError, match="--resume"):
        train(cfg)
    cfg.resume = True
    changed = small(corpus, out, max_steps=4, eval_steps=2, lr=1e-2, resume=True, lora={"r": 8})
    with pytest.raises(TrainError, match=r"--resume: .* was started with other settings \(lora .*'r': 16.*'r': 8"):
        train(changed)  # a checkpoint of another adapter shape would not load: one line, not a traceback
    result = train(cfg)
    assert result.report["start_step"] == 2 and result.report["steps"] == 4
    # The batches of this call's two steps, not the ones the resume skipped or collated ahead.
    assert result.report["tokens"]["batches"] == 2 * cfg.grad_accum
    assert result.report["packing"].startswith("length-grouped")  # auto on sdpa
    assert 0.5 < result.report["real_token_share"] < 1.0
    assert [p["step"] for p in result.report["loss_curve"]] == [1, 2, 3, 4]
    assert (out / "adapter_model.safetensors").exists()


# --- fimtune.json --------------------------------------------------------------------------------------------


def test_run_meta_round_trips_and_refuses_other_versions(tmp_path: Path) -> None:
    meta = RunMeta(
        base_model="tiny",
        template="fimtune",
        fim_format_version=FORMAT_VERSION,
        budgets=Budgets(max_tokens=512).to_dict(),
        context={"enabled": True, "max_chars": 4000},
        seq_len=512,
        corpus_manifest_sha256="ab" * 32,
        train={"lr": 0.0002},
    )
    write_run_meta(tmp_path, meta)
    back = read_run_meta(tmp_path)
    assert back == meta
    assert Budgets(**back.budgets) == Budgets(max_tokens=512)
    data = json.loads((tmp_path / "fimtune.json").read_text())
    for other in (99, FORMAT_VERSION - 1):  # a run rendered otherwise (version 1: the prefix kept its blanks)
        (tmp_path / "fimtune.json").write_text(json.dumps({**data, "fim_format_version": other}))
        with pytest.raises(RunMetaError, match=f"format version {other}"):
            read_run_meta(tmp_path)
    (tmp_path / "fimtune.json").write_text(json.dumps({**data, "version": 7}))
    with pytest.raises(RunMetaError, match="version 7"):
        read_run_meta(tmp_path)
    with pytest.raises(RunMetaError, match="not a run folder"):
        read_run_meta(tmp_path / "nowhere")


# --- bad input: one line, non-zero exit ----------------------------------------------------------------------


def run_cmd(*argv: str) -> str:
    from fimtune.console import CommandError
    from fimtune.train.cli import add_train_parser

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers())
    args = parser.parse_args(["train", *argv])
    with pytest.raises(CommandError) as err:
        args.func(args)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_input_is_one_actionable_line(corpus: Path, tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    from fimtune.tokenizer import build_byte_tokenizer

    common = ["--out", str(tmp_path / "run"), "--max-steps", "1", "--seq-len", "256", "--batch-tokens", "256"]
    assert "does not exist" in run_cmd("--corpus", str(corpus), "--base-model", str(tmp_path / "nope"), *common)
    assert "does not exist" in run_cmd("--corpus", str(tmp_path / "none"), "--base-model", "tiny", *common)

    empty = tmp_path / "empty"
    (empty / "data").mkdir(parents=True)
    (empty / "manifest.json").write_text(json.dumps({"format_version": CORPUS_FORMAT_VERSION}))
    assert "no training examples" in run_cmd("--corpus", str(empty), "--base-model", "tiny", *common)
    (empty / "manifest.json").write_text(json.dumps({"format_version": CORPUS_FORMAT_VERSION + 1}))
    assert "rebuild it" in run_cmd("--corpus", str(empty), "--base-model", "tiny", *common)

    # A base whose tokenizer has no FIM tokens, and no --template.
    plain = tmp_path / "plain"
    build_tiny_model(plain)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (plain / name).unlink()
    fast = PreTrainedTokenizerFast(tokenizer_object=build_byte_tokenizer(["<|endoftext|>"]), eos_token="<|endoftext|>")
    fast.save_pretrained(plain)
    msg = run_cmd("--corpus", str(corpus), "--base-model", str(plain), *common, "--template", "auto")
    assert "--template" in msg
    msg = run_cmd("--corpus", str(corpus), "--base-model", str(plain), *common, "--template", "qwen2.5-coder")
    assert "does not fit" in msg

    # A base that takes shorter sequences than --seq-len: refused before its weights are loaded.
    short = tmp_path / "short"
    build_tiny_model(short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 128}))
    msg = run_cmd("--corpus", str(corpus), "--base-model", str(short), *common)
    assert "--seq-len 256 is longer than" in msg and "128 tokens" in msg and "--seq-len 128 or less" in msg


def test_out_that_is_not_a_run_is_refused_and_left_as_it_was(corpus: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes\n")
    (mine / "tokenizer.json").write_text("{}")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine\n")
    common = ["--corpus", str(corpus), "--base-model", "tiny", "--max-steps", "1", "--seq-len", "256"]
    assert "is not empty and holds no fimtune run" in run_cmd(*common, "--out", str(mine))
    assert (mine / "README.md").read_text() == "my notes\n" and (mine / "tokenizer.json").read_text() == "{}"
    assert "is a file" in run_cmd(*common, "--out", str(a_file))
    assert "holds the input" in run_cmd(*common, "--out", str(corpus))
    assert sorted(p.name for p in mine.iterdir()) == ["README.md", "tokenizer.json"]


def test_context_limit_and_base_budgets_follow_the_model_config(tmp_path: Path) -> None:
    from fimtune.models import context_limit
    from fimtune.prompting import PromptSpec

    for config, limit in (
        ({"max_position_embeddings": 4096}, 4096),
        ({"n_positions": 1024}, 1024),  # GPT-2
        ({"seq_length": 8192}, 8192),
        ({"model_type": "x"}, None),
        ({"max_position_embeddings": 32768, "rope_scaling": {"type": "yarn", "factor": 4.0}}, 131072),  # Qwen2.5
        ({"max_position_embeddings": 4096, "rope_scaling": None}, 4096),
        ({"max_position_embeddings": True}, None),  # not a number
    ):
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert context_limit(tmp_path) == limit
    assert context_limit(tmp_path / "missing") is None
    assert PromptSpec.for_base("starcoder", context_limit=None).budgets == Budgets()
    assert PromptSpec.for_base("starcoder", context_limit=16384).budgets == Budgets()  # more room: defaults stay
    small = PromptSpec.for_base("starcoder", context_limit=512).budgets
    assert (small.max_tokens, small.max_middle_tokens) == (512, 128)
    given = Budgets(max_tokens=4096)
    assert PromptSpec.for_base("starcoder", budgets=given, context_limit=512).budgets is given  # asked for


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_and_keeps_checkpoints(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    msg = run_cmd(
        "--corpus",
        str(corpus),
        "--base-model",
        "tiny",
        "--out",
        str(out),
        "--max-steps",
        "6",
        "--seq-len",
        "256",
        "--batch-tokens",
        "512",
        "--lr",
        "1e30",
        "--eval-steps",
        "1",
    )
    assert "lower --lr" in msg and str(out / "checkpoints") in msg
    assert (out / "checkpoints" / "checkpoint-1" / "adapter_model.safetensors").exists()


# --- many processes ------------------------------------------------------------------------------------------

LAUNCHER = """
import argparse, sys
from fimtune import cli
if "train" not in cli.build_parser()._subparsers._group_actions[0].choices:  # not wired into fimtune.cli yet
    from fimtune.train.cli import add_train_parser
    def build_parser():
        p = argparse.ArgumentParser(prog="fimtune")
        p.add_argument("-v", "--verbose", action="store_true")
        add_train_parser(p.add_subparsers(dest="command", required=True))
        return p
    cli.build_parser = build_parser
sys.exit(cli.main())
"""


@pytest.mark.slow
def test_accelerate_launch_trains_on_two_cpu_processes(corpus: Path, cache: Path, tmp_path: Path) -> None:
    script = tmp_path / "fimtune_main.py"
    script.write_text(LAUNCHER)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "FIMTUNE_CACHE": str(cache)}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    proc = subprocess.run(
        [
            *launch,
            str(script),
            "train",
            "--corpus",
            str(corpus),
            "--base-model",
            "tiny",
            "--out",
            str(out),
            "--max-steps",
            "3",
            "--seq-len",
            "256",
            "--batch-tokens",
            "512",
            "--eval-steps",
            "3",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 3
    assert (out / "adapter_model.safetensors").exists() and read_run_meta(out).template == "fimtune"
    assert proc.stderr.count("adapter: ") == 1  # only the main process reports


# --- GPU only (run on a lent device; skipped elsewhere) ------------------------------------------------------

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)


@pytest.mark.gpu
@needs_cuda
def test_qlora_4bit_trains_in_bf16_and_saves_a_plain_adapter(corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes", reason="needs bitsandbytes for 4-bit NF4")
    out = tmp_path / "run"
    result = train(small(corpus, out, max_steps=4, eval_steps=2, quantize="4bit", gradient_checkpointing=True))
    assert result.report["quantize"] == "4bit" and result.report["dtype"] == "bfloat16"
    assert result.report["peak_memory_kind"] == "cuda_max_allocated"
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all(v.dtype in (torch.bfloat16, torch.float32) for v in adapter.values())


@pytest.mark.gpu
@needs_cuda
def test_flash_attention_packs_padding_free(corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("flash_attn", reason="needs the flash-attn package")
    result = train(small(corpus, tmp_path / "run", max_steps=4, eval_steps=2))
    assert result.report["attention"] == "flash_attention_2"
    assert result.report["packing"].startswith("padding-free") and result.report["real_token_share"] == 1.0


# --- the end token's weight ------------------------------------------------------------------------------------


def test_end_weighted_loss_is_trl_token_mean_at_one_and_scales_only_the_end_token() -> None:
    from types import SimpleNamespace

    from fimtune.train.sft import end_weighted_loss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=gen)
    end = 7
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, end, IGNORE_INDEX], [IGNORE_INDEX, 5, end, 2, 9, end]])
    out = SimpleNamespace(logits=logits)
    shifted, target = logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1)
    plain = torch.nn.functional.cross_entropy(shifted, target, ignore_index=IGNORE_INDEX)  # mean over labelled
    assert torch.allclose(end_weighted_loss(end, 1.0)(out, labels), plain)
    each = torch.nn.functional.cross_entropy(shifted, target.clamp(min=0), reduction="none")
    labelled = target != IGNORE_INDEX
    is_end = target == end
    expected = (each[labelled & ~is_end].sum() + 4.0 * each[is_end].sum()) / labelled.sum()
    assert torch.allclose(end_weighted_loss(end, 4.0)(out, labels), expected)
    # Normalised by the count the trainer gives across accumulated micro-batches, when it gives one.
    assert torch.allclose(
        end_weighted_loss(end, 4.0)(out, labels, num_items_in_batch=20), expected * labelled.sum() / 20
    )


def test_end_weight_reaches_the_trainer_and_is_recorded(corpus: Path, tmp_path: Path) -> None:
    """Through the trainer (micro-batches, gradient accumulation, its normalisation): the weighted trainer at
    weight 1 gives TRL's own first loss, and weight 5 a larger one on the same first batch."""
    losses = {}
    for label, weight in (("trl", 1.0), ("ours", 1.0 + 1e-9), ("five", 5.0)):
        out = tmp_path / label
        result = train(small(corpus, out, max_steps=1, eval_steps=1, end_weight=weight, grad_accum=2))
        losses[label] = result.report["loss_curve"][0]["loss"]
        assert json.loads((out / "fimtune.json").read_text())["train"]["end_weight"] == weight
    assert losses["ours"] == pytest.approx(losses["trl"], rel=1e-3)
    assert losses["five"] > losses["trl"] * 1.01  # its end tokens counted five times


def test_validation_is_whole_training_files_never_the_test_split() -> None:
    from fimtune.train.data import split_validation

    def ex(path: str, i: int) -> FimExample:
        return FimExample(f"{path}:{i}", "r", path, "python", "random", "a = ", f"{i}", "\n", ())

    examples = [ex(f"f{k}.py", i) for k in range(20) for i in range(10)]  # 20 files of 10 examples
    train, validation = split_validation(examples, 256, seed=0)
    assert len(validation) == 20 and len(train) == 180  # a tenth, in whole files
    assert not {e.path for e in train} & {e.path for e in validation}
    assert split_validation(examples, 256, seed=0) == (train, validation)  # seeded
    assert split_validation(examples, 256, seed=1)[1] != validation
    assert len(split_validation(examples, 15, seed=0)[1]) == 10  # at most n, in whole files
    mixed = [ex("big.py", i) for i in range(30)] + [ex("one.py", 0)] + [ex("two.py", i) for i in range(2)]
    assert {e.path for e in split_validation(mixed, 256, seed=0)[1]} == {"one.py", "two.py"}  # 3 fit, 30 do not
    one_file = examples[:10]
    assert split_validation(one_file, 256, seed=0) == (one_file, [])  # the last file always trains


@pytest.mark.parametrize(
    ("processes", "averaged", "items", "expected"),
    [(1, True, 8, 3.0), (2, True, 8, 6.0), (2, False, 8, 3.0), (2, True, None, 3.0)],
)
def test_end_weighted_loss_is_scaled_across_processes_as_the_trainers_own(
    processes: int, averaged: bool, items: int | None, expected: float
) -> None:
    """With the token count gathered over N processes the loss is per token of all of them, and DDP averages the
    gradients: Trainer.compute_loss multiplies by N, and the end-weighted loss that replaces it must too."""
    from types import SimpleNamespace

    from fimtune.train.sft import EndWeightedSFTTrainer

    fake = SimpleNamespace(
        args=SimpleNamespace(average_tokens_across_devices=averaged, n_gpu=1),
        accelerator=SimpleNamespace(num_processes=processes),
        get_tp_size=lambda: 1,
        end_loss=lambda outputs, labels, num_items_in_batch: torch.tensor(3.0),
    )
    loss = EndWeightedSFTTrainer.compute_loss(fake, lambda **kw: None, {"labels": None}, num_items_in_batch=items)  # type: ignore[arg-type]
    assert float(loss) == expected
