"""The built-in byte tokenizer: ids are bytes, it round-trips through AutoTokenizer."""

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from alignjax.data.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, make_byte_tokenizer

TEXT = "héllo\n\t 世界 <b>"


def test_ids_are_utf8_bytes_and_decode_back(byte_tok):
    ids = byte_tok(TEXT, add_special_tokens=False)["input_ids"]
    assert ids == list(TEXT.encode("utf-8"))
    assert byte_tok.decode(ids) == TEXT
    assert len(byte_tok) == VOCAB_SIZE == 263
    assert (byte_tok.pad_token_id, byte_tok.bos_token_id, byte_tok.eos_token_id) == (
        PAD_ID,
        BOS_ID,
        EOS_ID,
    )


def test_special_and_role_tokens_are_single_ids(byte_tok):
    ids = byte_tok("<bos><|user|>a<|end|><|assistant|>b<eos>", add_special_tokens=False)["input_ids"]
    assert ids == [257, 260, 97, 262, 261, 98, 258]


def test_chat_template(byte_tok):
    text = byte_tok.apply_chat_template(
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
        ],
        tokenize=False,
    )
    assert text == "<bos><|system|>s<|end|><|user|>u<|end|><|assistant|>a<eos>"
    prompt = byte_tok.apply_chat_template(
        [{"role": "user", "content": "u"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<bos><|user|>u<|end|><|assistant|>"


def test_save_pretrained_and_autotokenizer_round_trip(tmp_path):
    make_byte_tokenizer().save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, PreTrainedTokenizerBase)
    assert loaded(TEXT, add_special_tokens=False)["input_ids"] == list(TEXT.encode("utf-8"))
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (
        PAD_ID,
        BOS_ID,
        EOS_ID,
    )
    assert (
        loaded.apply_chat_template(
            [{"role": "user", "content": "u"}], tokenize=False, add_generation_prompt=True
        )
        == "<bos><|user|>u<|end|><|assistant|>"
    )


def test_load_tokenizer_byte_or_local_directory(tmp_path):
    from alignjax.data import load_tokenizer

    assert load_tokenizer("byte")("a", add_special_tokens=False)["input_ids"] == [97]
    make_byte_tokenizer().save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path)).eos_token_id == EOS_ID
    with pytest.raises(ValueError, match="is not a directory"):
        load_tokenizer("meta-llama/Llama-3-8B")
