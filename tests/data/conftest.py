import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from datatest_tokenizers import make_llama_like, make_qwen_like  # noqa: E402

from alignjax.data.byte_tokenizer import make_byte_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def byte_tok():
    return make_byte_tokenizer()


@pytest.fixture(scope="session")
def llama_tok():
    return make_llama_like()


@pytest.fixture(scope="session")
def qwen_tok():
    return make_qwen_like()
