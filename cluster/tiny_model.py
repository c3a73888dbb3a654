"""Build a small Llama-architecture model with random weights and a locally trained tokenizer, offline.

The output is gibberish by design: the model exists so the serving system drives a real engine on machines
without hub access. `python -m cluster.tiny_model [--variant tiny|mid|small|fallback] [--out DIR] [--force]`
prints the model directory on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "MARKER_NAME",
    "VARIANTS",
    "ModelSize",
    "build",
    "is_built",
    "main",
    "model_dir",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CORPUS_PATH = Path(__file__).resolve().parent / "data" / "corpus.txt"
# Written last: its presence is what makes a directory a complete model.
MARKER_NAME = "surge-model.json"
VOCAB_SIZE = 2048
MAX_POSITION_EMBEDDINGS = 2048
SEED = 0
# Bump when the build changes (tokenizer, template, weights) so older builds stop counting as complete.
BUILD_FORMAT = 1


@dataclass(frozen=True)
class ModelSize:
    """Transformer dimensions of one variant."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int


VARIANTS: dict[str, ModelSize] = {
    "tiny": ModelSize(128, 256, 2, 4, 2),
    "mid": ModelSize(256, 768, 4, 4, 2),
    "small": ModelSize(512, 1536, 8, 8, 4),
    "fallback": ModelSize(64, 128, 1, 2, 1),
}

BOS = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
# A dedicated pad (as in Llama 3.1) so padding is never mistaken for the end of a turn.
PAD = "<|finetune_right_pad_id|>"
SPECIAL_TOKENS = [BOS, END_OF_TEXT, START_HEADER, END_HEADER, EOT, PAD]

# Llama-3 layout; content is used as a plain string so vLLM detects the "string" content format.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- (message['content'] or '') | trim }}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# Llama 3's pre-tokenizer split: unlike GPT-2's it keeps runs of newlines together ("\n\n" after headers).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def model_dir(variant: str) -> Path:
    """Default directory of a variant: `<project>/.cache/models/surge-<variant>`."""
    _size(variant)
    return PROJECT_ROOT / ".cache" / "models" / f"surge-{variant}"


def is_built(variant: str, out: Path) -> bool:
    """Whether `out` holds a complete build of `variant` (its marker matches)."""
    try:
        marker = json.loads((out / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker == _marker(variant)


def build(variant: str = "tiny", out: Path | None = None, force: bool = False) -> Path:
    """Build `variant` into `out` (default: `model_dir(variant)`) unless already built; return `out`."""
    out = Path(out) if out is not None else model_dir(variant)
    if not force and is_built(variant, out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would outlive the rename
    try:
        _write_model(variant, staging)
        _publish(staging, out, variant, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _size(variant: str) -> ModelSize:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def _marker(variant: str) -> dict[str, Any]:
    config = {**asdict(_size(variant)), "vocab_size": VOCAB_SIZE}
    config["max_position_embeddings"] = MAX_POSITION_EMBEDDINGS
    return {"format": BUILD_FORMAT, "variant": variant, "seed": SEED, "config": config}


def _write_model(variant: str, target: Path) -> None:
    """Write tokenizer, weights, generation config and, last, the marker into `target`."""
    tokenizer = _train_tokenizer()
    ids = {tok: _token_id(tokenizer, tok) for tok in SPECIAL_TOKENS}
    _save_tokenizer(tokenizer, target)
    _save_weights(_size(variant), ids, target)
    (target / MARKER_NAME).write_text(json.dumps(_marker(variant), indent=2) + "\n")


def _train_tokenizer() -> Tokenizer:
    """Train a byte-level BPE on the bundled corpus to exactly VOCAB_SIZE tokens, specials included."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        # Every byte is a token, so any input encodes without an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Paragraphs, not lines, so the blank lines of chat headers ("\n\n") become one token.
    paragraphs = CORPUS_PATH.read_text(encoding="utf-8").split("\n\n")
    tokenizer.train_from_iterator([p.strip("\n") + "\n\n" for p in paragraphs], trainer)
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"{CORPUS_PATH} yields {tokenizer.get_vocab_size()} tokens, need {VOCAB_SIZE}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, _token_id(tokenizer, BOS))]
    )
    return tokenizer


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise RuntimeError(f"{token} missing from the trained vocabulary")
    return token_id


def _save_tokenizer(tokenizer: Tokenizer, target: Path) -> None:
    """Wrap the trained tokenizer for transformers (specials, chat template) and save it."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        additional_special_tokens=[END_OF_TEXT, START_HEADER, END_HEADER],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITION_EMBEDDINGS,
        clean_up_tokenization_spaces=False,
    )
    wrapped.save_pretrained(target)


def _save_weights(size: ModelSize, ids: dict[str, int], target: Path) -> None:
    """Save random, seeded Llama weights with config and generation config."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOT],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
        dtype="float32",
        **asdict(size),
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    # Either stop token ends generation: a chat turn (eot) or raw text (end_of_text).
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=ids[BOS], eos_token_id=[ids[EOT], ids[END_OF_TEXT]], pad_token_id=ids[PAD]
    )
    # safetensors is the only format in transformers 5; the flag keeps 4.x from writing pickles.
    model.save_pretrained(target, safe_serialization=True)


def _publish(staging: Path, out: Path, variant: str, force: bool) -> None:
    """Move the finished build to `out` by rename, so `out` never holds half a model."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        if not force and is_built(variant, out):
            return  # a concurrent build finished first
        os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        if not is_built(variant, out):
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: build one variant and print its directory."""
    parser = argparse.ArgumentParser(prog="python -m cluster.tiny_model", description=__doc__)
    parser.add_argument("--variant", choices=list(VARIANTS), default="tiny")
    parser.add_argument("--out", type=Path, default=None, help="default: .cache/models/surge-<variant>")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete model exists")
    args = parser.parse_args(argv)
    started = time.monotonic()
    path = build(args.variant, args.out, args.force)
    print(f"surge-{args.variant} ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
