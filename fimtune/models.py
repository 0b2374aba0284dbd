"""Base models: a name (`tiny`, `nano`, a folder, a hub id) made a loadable model and tokenizer, its context limit
and dtype; below training, eval, the engines and the server."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


log = logging.getLogger(__name__)

TINY = "tiny"
# Bump when the tiny preset's architecture or tokenizer changes: the cache folder name changes with it.
TINY_VERSION = 1
TINY_SEED = 0
TINY_ARCH: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    # Wider than the usual 0.02 so a frozen random head leaves LoRA room to move the logits (tests overfit it).
    "initializer_range": 0.1,
}


class ModelError(Exception):
    """The base model cannot be found, loaded or adapted; the message says which and what to do."""


DTYPES = ("auto", "fp32", "bf16")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# The rule (fimtune.config.Rule keywords) of every `device` setting: eval's flag and the server's setting.
DEVICE_RULE: dict[str, Any] = {
    "must": "auto, cpu, mps, cuda or cuda:N",
    "test": lambda v: _DEVICE.fullmatch(v) is not None,
}


def bf16_supported(device: str) -> bool:
    """Whether torch has native bf16 matrix kernels on `device` (asked of torch, not inferred from a CPU name):
    CUDA devices that report bf16; x86 CPUs with AVX512-BF16 or AMX; other CPUs (ARM) where oneDNN has bf16."""
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device == "mps":
        return torch.backends.mps.is_available()
    if device != "cpu":
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
        # oneDNN also "supports" bf16 on plain AVX512 by emulation, which is slower than fp32 there.
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_dtype(choice: str, device: str, setting: str = "--dtype") -> str:
    """`auto` -> "bf16" where the device has bf16 matrix support, else "fp32"; an explicit choice is checked."""
    if choice not in DTYPES:
        raise ModelError(f"{setting}: must be one of {', '.join(DTYPES)}, not {choice!r}")
    if choice == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if choice == "bf16" and not bf16_supported(device):
        raise ModelError(
            f"{setting} bf16: torch reports no bf16 matrix support on {device}; use {setting} fp32 or auto"
        )
    return choice


def cache_root() -> Path:
    """Where fimtune keeps what it builds itself (the `tiny` preset): $FIMTUNE_CACHE or ~/.cache/fimtune."""
    env = os.environ.get("FIMTUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fimtune"


def _tiny_spec() -> dict[str, Any]:
    from fimtune.fim_format import TEMPLATES

    return {
        "version": TINY_VERSION,
        "seed": TINY_SEED,
        "arch": TINY_ARCH,
        "template": "fimtune",
        "tokens": list(TEMPLATES["fimtune"].tokens()),
    }


def tiny_model_dir() -> Path:
    """The cache folder of the `tiny` preset; its name hashes everything the weights depend on."""
    digest = hashlib.sha256(json.dumps(_tiny_spec(), sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "models" / f"tiny-{digest}"


def build_tiny_model(folder: Path) -> Path:
    """Write the `tiny` preset into `folder`: a 2-layer Llama with a byte-level tokenizer carrying fimtune's
    sentinel tokens, with weights drawn from a fixed seed (the same bytes on every machine)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fimtune.fim_format import TEMPLATES
    from fimtune.tokenizer import byte_tokenizer_for, save_tokenizer

    template = TEMPLATES["fimtune"]
    tok = byte_tokenizer_for(template)
    end_id = tok.token_to_id(template.end)
    pad_id = tok.token_to_id(template.pad) if template.pad else end_id
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        bos_token_id=None,
        eos_token_id=end_id,
        pad_token_id=pad_id,
        **{k: v for k, v in TINY_ARCH.items() if k != "model_type"},
    )
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(rng_state)
    model.generation_config.eos_token_id = end_id
    model.generation_config.pad_token_id = pad_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    save_tokenizer(tok, folder, template, model_max_length=TINY_ARCH["max_position_embeddings"])
    (folder / "fimtune_preset.json").write_text(json.dumps(_tiny_spec(), indent=2, sort_keys=True) + "\n")
    return folder


def ensure_tiny_model() -> Path:
    """The `tiny` preset's folder, built on first use; safe when several processes ask at once."""
    final = tiny_model_dir()
    if (final / "fimtune_preset.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    build_tiny_model(staging)
    try:
        os.replace(staging, final)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
        if not (final / "fimtune_preset.json").exists():
            raise
    log.info("built the tiny preset model in %s", final)
    return final


# fimtune's own pretrained base models, best first: (name, environment variable naming a folder, how to train it).
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "pico": ("FIMTUNE_PICO", "on a GPU with `fimtune pretrain --preset pico --out runs/pico` (about 20 minutes)"),
    "nano": ("FIMTUNE_NANO", "on a CPU with `fimtune pretrain --preset nano --out runs/nano` (hours on 2 cores)"),
}


def packaged_model_dir(name: str) -> Path:
    """Where an install ships a built-in model (package data): fimtune/models/<name>/."""
    return Path(__file__).resolve().parent / "models" / name


def model_label(folder: str | Path) -> str:
    """How a model folder is recorded in provenance: a built-in's name (`nano`) for its shipped folder, a path
    relative to the working folder inside it, else the path: never this machine's absolute path of the package."""
    path = Path(folder).expanduser().resolve()
    for name in BUILTIN_MODELS:
        if path == packaged_model_dir(name).resolve():
            return name
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def resolve_builtin(name: str) -> Path:
    """A built-in model (`pico`, `nano`): the folder named by its environment variable, else the shipped one."""
    env_name, how = BUILTIN_MODELS[name]
    env = os.environ.get(env_name)
    if env:
        path = Path(env).expanduser()
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{env_name}={env} is not a model folder (no config.json there); point it at the model/ folder "
                f"that `fimtune pretrain --preset {name} --out RUN` wrote (RUN/model), or unset it"
            )
        return path
    packaged = packaged_model_dir(name)
    if (packaged / "config.json").is_file():
        return packaged
    raise ModelError(
        f"the built-in `{name}` model is not installed ({packaged} holds no model). Train it {how}; "
        f"--max-minutes and --resume split it into calls; then copy runs/{name}/model/ to {packaged} or set "
        f"{env_name}=runs/{name}/model; or use --base-model tiny (random weights) or a model folder"
    )


def default_base_model() -> str:
    """The base used when none is named: the best built-in model installed (`pico`, then `nano`: real, if small,
    code models), else `tiny` (random weights)."""
    for name in BUILTIN_MODELS:
        try:
            resolve_builtin(name)
        except ModelError:
            continue
        return name
    return TINY


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_base_model(name: str) -> Path:
    """A base model name -> a local folder: `tiny` (built and cached), `pico` or `nano` (fimtune's pretrained
    models, see resolve_builtin), a folder, or a Hugging Face Hub id (downloaded to, or found in, its cache)."""
    if name == TINY:
        return ensure_tiny_model()
    if name in BUILTIN_MODELS:
        return resolve_builtin(name)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"base model folder {path} has no config.json; point --base-model at a model folder")
        return path
    if path.exists():
        raise ModelError(f"base model {path} is a file; --base-model takes a model folder, a hub id or `tiny`")
    if not _HUB_ID.match(name):
        raise ModelError(f"base model {name} does not exist; give a model folder, a Hugging Face model id, or `tiny`")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py"]
            )
        )
    except Exception as e:  # network, auth, unknown repo: all mean "cannot get this model"
        raise ModelError(
            f"base model {name!r} is neither a local folder nor reachable on the Hugging Face Hub "
            f"({type(e).__name__}); check the name, or download it and pass its folder"
        ) from None


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer from {path}: {e}") from None


def model_type_of(path: Path) -> str:
    try:
        return str(json.loads((path / "config.json").read_text())["model_type"])
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise ModelError(f"{path / 'config.json'} is not a model config ({e})") from None


# Where model configs keep the longest sequence they take, by family (the first one present counts).
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_limit(path: Path) -> int | None:
    """The longest sequence (in tokens) the model at `path` takes, from its config.json; None when it says not.

    With RoPE scaling (YaRN, dynamic, linear: rope_scaling.factor) the positions are multiplied by the factor;
    for models whose config already gives the extended length this overstates it, which only ever allows more.
    """
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict):
        return None
    for key in _CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            scaling = config.get("rope_scaling")
            factor = scaling.get("factor") if isinstance(scaling, dict) else None
            if isinstance(factor, int | float) and not isinstance(factor, bool) and factor > 1:
                return int(value * factor)
            return value
    return None


def pick_attention(requested: str, on_gpu: bool) -> str:
    """flash_attention_2 when asked or (auto) when flash-attn is installed and a GPU is used; else sdpa."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        return "flash_attention_2" if has_flash and on_gpu else "sdpa"
    if requested == "flash_attention_2" and not (has_flash and on_gpu):
        raise ModelError(
            "attention flash_attention_2 needs a CUDA GPU and the flash-attn package (pip install flash-attn); "
            "use --attention sdpa"
        )
    return requested


@dataclass
class LoadedModel:
    model: PreTrainedModel
    attention: str
    dtype: str
    quantize: str
    device: str


def load_base_model(
    path: Path,
    *,
    quantize: str = "none",
    attention: str = "auto",
    gradient_checkpointing: bool = False,
    device_index: int = 0,
    compute: str = "bf16",
) -> LoadedModel:
    """Load the base for training: weights in bf16 on GPU when `compute` is bf16, else fp32 (a CPU keeps fp32
    weights and trains under bf16 autocast); 4-bit NF4 (double quantization) or 8-bit through bitsandbytes,
    prepared for k-bit training; attention chosen by pick_attention and logged."""
    import torch
    from transformers import AutoModelForCausalLM

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu and compute == "bf16" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": pick_attention(attention, on_gpu)}
    if quantize != "none":
        if not on_gpu or importlib.util.find_spec("bitsandbytes") is None:
            raise ModelError(
                f"--quantize {quantize} needs a CUDA GPU and bitsandbytes (pip install 'fimtune[gpu]'); "
                "use --quantize none on this machine"
            )
        from transformers import BitsAndBytesConfig

        if quantize == "4bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_quant_storage=torch.bfloat16,
            )
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": device_index}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a causal language model from {path}: {str(e).splitlines()[0]}") from None
    model.config.use_cache = False
    if quantize != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    log.info(
        "loaded %s (%s, %s attention%s)",
        path,
        str(dtype).removeprefix("torch."),
        kwargs["attn_implementation"],
        f", {quantize}" if quantize != "none" else "",
    )
    return LoadedModel(
        model=model,
        attention=kwargs["attn_implementation"],
        dtype=str(dtype).removeprefix("torch."),
        quantize=quantize,
        device="cuda" if on_gpu else "cpu",
    )


def check_vocab_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a tokenizer with ids beyond the model's embeddings: fimtune never resizes a base's embeddings
    (adapters of resized models cannot be served by vLLM or llama.cpp)."""
    weight: Any = model.get_input_embeddings().weight
    rows = int(weight.shape[0])
    if len(tokenizer) > rows:
        raise ModelError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embeddings have {rows} rows; "
            "fimtune does not resize embeddings: use the tokenizer that came with the model"
        )


def merge_adapter(base_path: Path, adapter: Path, dest: Path, tokenizer: Any) -> Path:
    """Fold a LoRA adapter into an unquantized copy of the base and save it (with `tokenizer`) as a plain model
    folder: what `fimtune train --merge` writes and what `fimtune export` converts."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))
    return dest
