"""The pad-id rule every batch uses: the tokenizer's pad token, else its EOS token."""

import types

import pytest

from alignjax.data.byte_tokenizer import EOS_ID, PAD_ID, make_byte_tokenizer
from alignjax.data.load_tokenizer import tokenizer_pad_id
from alignjax.data.records import DataSetupError


def test_pad_token_wins_over_eos():
    assert (PAD_ID, EOS_ID) == (256, 258)
    assert tokenizer_pad_id(make_byte_tokenizer()) == 256


def test_without_a_pad_token_the_eos_token_pads():
    tokenizer = make_byte_tokenizer()
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    assert tokenizer_pad_id(tokenizer) == 258


def test_pad_id_0_is_a_pad_id_not_a_missing_one():
    assert tokenizer_pad_id(types.SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0


def test_neither_pad_nor_eos_is_an_error_that_names_the_tokenizer_and_the_fix():
    tokenizer = types.SimpleNamespace(pad_token_id=None, eos_token_id=None, name_or_path="/models/x")
    message = r"'/models/x' has neither a pad token nor an EOS token.*set pad_token or eos_token in its"
    with pytest.raises(DataSetupError, match=message):
        tokenizer_pad_id(tokenizer)
