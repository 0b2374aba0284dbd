"""Run llama.cpp's own convert_hf_to_gguf.py on a model folder, with two additions fimtune needs, as a script
(`python -m fimtune.export.convert_gguf ...`) so llama.cpp's modules and logging stay out of fimtune's process:

- the tokenizer's FIM tokens are written into the GGUF's metadata (tokenizer.ggml.fim_pre_token_id and the
  rest), so llama-server's /infill lays out the template the model was tuned with instead of guessing by name;
- a byte-level BPE tokenizer whose pre-tokenizer is exactly GPT-2's (fimtune's own models) is named `gpt-2`:
  the converter recognizes tokenizers only by a hash of known models' output and refuses any other.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path
from typing import Any


def is_gpt2_pre_tokenizer(model_dir: Path) -> bool:
    """Whether tokenizer.json splits text as GPT-2 does: a lone ByteLevel pre-tokenizer with GPT-2's regex."""
    try:
        pre = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    except (OSError, ValueError):
        return False
    return pre.get("type") == "ByteLevel" and bool(pre.get("use_regex")) and not pre.get("add_prefix_space")


def _patch(src: Path, model_dir: Path, fim_ids: dict[str, int]) -> None:
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    import gguf  # llama.cpp's own gguf-py, matching its converter
    from conversion import base

    recognize = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return recognize(self, tokenizer)
        except NotImplementedError:
            if is_gpt2_pre_tokenizer(model_dir):
                return "gpt-2"
            raise

    add_to_gguf = gguf.SpecialVocab.add_to_gguf

    def add_special_tokens(self: Any, gw: Any, quiet: bool = False) -> None:
        add_to_gguf(self, gw, quiet)
        present = {key for kv in gw.kv_data for key in kv}
        for name, token_id in fim_ids.items():
            key = getattr(gguf.Keys.Tokenizer, name)
            if key not in present:
                gw.add_uint32(key, token_id)

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    gguf.SpecialVocab.add_to_gguf = add_special_tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--llama-cpp", required=True, type=Path, help="llama.cpp source folder")
    p.add_argument("--model", required=True, type=Path, help="transformers model folder (merged)")
    p.add_argument("--out", required=True, type=Path, help="GGUF file to write")
    p.add_argument("--outtype", required=True, help="f32, f16 or q8_0")
    p.add_argument("--fim-ids", default="{}", help='JSON: {"FIM_PRE_ID": 1, ...} (gguf.Keys.Tokenizer names)')
    args = p.parse_args(argv)
    _patch(args.llama_cpp, args.model, json.loads(args.fim_ids))
    sys.argv = ["convert_hf_to_gguf.py", str(args.model), "--outfile", str(args.out), "--outtype", args.outtype]
    runpy.run_path(str(args.llama_cpp / "convert_hf_to_gguf.py"), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
