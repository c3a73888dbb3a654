"""The locally built Llama model: tokenizer, chat template, config, idempotent builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster import tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model.build("tiny", tmp_path_factory.mktemp("models") / "surge-tiny")


def test_tokenizer_has_exactly_2048_tokens_including_specials(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)

    assert len(tokenizer) == 2048
    assert tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.pad_token_id is not None


def test_chat_template_renders_a_user_turn_and_generation_prompt(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is my parcel?"},
    ]

    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhere is my parcel?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_text_round_trips_through_the_byte_level_tokenizer(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    text = "Refund  for order AB1234567890:\n\n  ünïcödé 😀"

    ids = tokenizer(text).input_ids

    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_config_is_llama_with_the_tiny_sizes(tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())

    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    sizes = {k: config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers")}
    assert sizes == {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2}
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["vocab_size"] == 2048


def test_generation_stops_at_end_of_turn_or_end_of_text(tiny_dir: Path) -> None:
    generation = json.loads((tiny_dir / "generation_config.json").read_text())
    vocab = json.loads((tiny_dir / "tokenizer.json").read_text())["added_tokens"]
    ids = {t["content"]: t["id"] for t in vocab}

    assert generation["eos_token_id"] == [ids["<|eot_id|>"], ids["<|end_of_text|>"]]


def test_second_build_is_a_noop(tiny_dir: Path) -> None:
    marker = tiny_dir / tiny_model.MARKER_NAME
    before = (marker.read_text(), marker.stat().st_mtime_ns)

    assert tiny_model.build("tiny", tiny_dir) == tiny_dir

    assert (marker.read_text(), marker.stat().st_mtime_ns) == before
    assert json.loads(marker.read_text())["variant"] == "tiny"


def test_build_leaves_no_staging_directories(tiny_dir: Path) -> None:
    assert [p.name for p in tiny_dir.parent.iterdir()] == ["surge-tiny"]


def test_default_directory_is_under_the_project_cache() -> None:
    path = tiny_model.model_dir("mid")

    assert path.parts[-3:] == (".cache", "models", "surge-mid")


def test_unknown_variant_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        tiny_model.model_dir("huge")


def test_failed_build_leaves_no_model_and_no_staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_model, "_save_weights", interrupted)

    with pytest.raises(KeyboardInterrupt):
        tiny_model.build("fallback", tmp_path / "surge-fallback")

    assert list(tmp_path.iterdir()) == []
