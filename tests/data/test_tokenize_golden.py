"""Golden token ids and loss masks, written by hand from the tokenizers' vocabularies.

Byte tokenizer: id == byte value, specials <pad>=256 <bos>=257 <eos>=258
<|system|>=259 <|user|>=260 <|assistant|>=261 <|end|>=262.
Word-level tokenizers: ids from the vocab tables in datatest_tokenizers.py.
"""

import pytest
from datatest_helpers import one_batch, row, write_jsonl
from datatest_tokenizers import LLAMA_VOCAB, llama_ids, make_llama_like, qwen_ids
from tokenizers import processors

H, I_, Y, O_, N = 72, 105, 89, 111, 78  # "H" "i" "Y" "o" "N"
PAD, BOS, EOS, SYS, USR, AST, END = 256, 257, 258, 259, 260, 261, 262


def test_plain_pair_byte_tokenizer(tmp_path, byte_tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "chosen": "Yo", "rejected": "No"}])
    b = one_batch(path, byte_tok, max_length=16, max_prompt_length=8, buckets=[8, 16])
    assert b.tokens_BxL.shape == (2, 8)  # chosen row, rejected row; bucket 8
    assert row(b, 0) == ([BOS, H, I_, Y, O_, EOS], [0, 0, 0, 1, 1, 1])
    assert row(b, 1) == ([BOS, H, I_, N, O_, EOS], [0, 0, 0, 1, 1, 1])
    assert b.tokens_BxL[0, 6:].tolist() == [PAD, PAD]
    assert b.positions_BxL[0].tolist() == [0, 1, 2, 3, 4, 5, 0, 0]
    assert b.segment_ids_BxL[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert b.segment_pair_index_BxS.tolist() == [[0], [0]]
    assert b.segment_is_chosen_BxS.tolist() == [[1], [0]]


def test_conversational_pair_byte_tokenizer(tmp_path, byte_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": "Hi"}],
                "chosen": [{"role": "assistant", "content": "Yo"}],
                "rejected": [{"role": "assistant", "content": "No"}],
            }
        ],
    )
    b = one_batch(path, byte_tok, max_length=16, max_prompt_length=8, buckets=[16])
    # The template writes <bos> and ends the assistant turn with <eos>: both once.
    assert row(b, 0) == ([BOS, USR, H, I_, END, AST, Y, O_, EOS], [0] * 6 + [1, 1, 1])
    assert row(b, 1) == ([BOS, USR, H, I_, END, AST, N, O_, EOS], [0] * 6 + [1, 1, 1])


LLAMA_PROMPT = (
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "user",
    "<|end_header_id|>",
    "\n",
    "\n",
    "Hi",
    "there",
    "<|eot_id|>",
    "<|start_header_id|>",
    "assistant",
    "<|end_header_id|>",
    "\n",
    "\n",
)


def _conv_pair():
    return {
        "prompt": [{"role": "user", "content": "Hi there"}],
        "chosen": [{"role": "assistant", "content": "I am fine ."}],
        "rejected": [{"role": "assistant", "content": "Bye"}],
    }


def test_conversational_pair_llama_template_writes_bos(tmp_path, llama_tok):
    path = write_jsonl(tmp_path / "d.jsonl", [_conv_pair()])
    b = one_batch(path, llama_tok, max_length=32, max_prompt_length=16, buckets=[32])
    chosen = llama_ids(*LLAMA_PROMPT, "I", "am", "fine", ".", "<|eot_id|>")
    rejected = llama_ids(*LLAMA_PROMPT, "Bye", "<|eot_id|>")
    assert row(b, 0) == (chosen, [0] * 14 + [1] * 5)
    assert row(b, 1) == (rejected, [0] * 14 + [1] * 2)


def test_no_doubled_bos_when_post_processor_also_adds_it(tmp_path):
    tok = make_llama_like()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 1)]
    )
    assert tok("Hi")["input_ids"][:1] == [1]  # the tokenizer itself would add one
    path = write_jsonl(
        tmp_path / "d.jsonl", [_conv_pair(), {"prompt": "Hi", "chosen": "yes", "rejected": "no"}]
    )
    cfg = dict(max_length=32, max_prompt_length=16, buckets=[32], batch_size=2)
    b = one_batch(path, tok, **cfg)
    assert row(b, 0)[0][:2] == llama_ids("<|begin_of_text|>", "<|start_header_id|>")
    assert row(b, 1)[0] == llama_ids("<|begin_of_text|>", "Hi", "yes", "<|eot_id|>")


def test_eos_appended_after_template_turn_end_when_eos_differs(tmp_path):
    tok = make_llama_like(eos_token="<|end_of_text|>")
    path = write_jsonl(tmp_path / "d.jsonl", [_conv_pair()])
    b = one_batch(path, tok, max_length=32, max_prompt_length=16, buckets=[32])
    tokens, mask = row(b, 1)
    assert tokens[14:] == llama_ids("Bye", "<|eot_id|>", "<|end_of_text|>")
    assert mask[14:] == [1, 1, 1]


def test_plain_pair_llama_adds_bos_and_eos(tmp_path, llama_tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi there", "chosen": "good", "rejected": "bad"}])
    b = one_batch(path, llama_tok, max_length=16, max_prompt_length=8, buckets=[16])
    assert row(b, 0) == (
        llama_ids("<|begin_of_text|>", "Hi", "there", "good", "<|eot_id|>"),
        [0, 0, 0, 1, 1],
    )


def test_qwen_like_template_without_bos(tmp_path, qwen_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": "Hi"}],
                "chosen": [{"role": "assistant", "content": "good"}],
                "rejected": [{"role": "assistant", "content": "bad"}],
            }
        ],
    )
    b = one_batch(path, qwen_tok, max_length=16, max_prompt_length=12, buckets=[16])
    prompt = qwen_ids(
        "<|im_start|>", "user", "\n", "Hi", "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"
    )
    # The template's "\n" after <|im_end|> is dropped: the response ends at EOS.
    assert row(b, 0) == (prompt + qwen_ids("good", "<|im_end|>"), [0] * 9 + [1, 1])
    assert row(b, 1) == (prompt + qwen_ids("bad", "<|im_end|>"), [0] * 9 + [1, 1])


def test_qwen_like_plain_text_has_no_bos(tmp_path, qwen_tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "chosen": "good", "rejected": "bad"}])
    b = one_batch(path, qwen_tok, max_length=16, max_prompt_length=8, buckets=[16])
    assert row(b, 0) == (qwen_ids("Hi", "good", "<|im_end|>"), [0, 1, 1])


def test_implicit_prompt_is_common_prefix_of_conversations(tmp_path, byte_tok):
    conv = [{"role": "user", "content": "Hi"}]
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "chosen": conv + [{"role": "assistant", "content": "Yo"}],
                "rejected": conv + [{"role": "assistant", "content": "No"}],
            }
        ],
    )
    b = one_batch(path, byte_tok, max_length=16, max_prompt_length=8, buckets=[16])
    assert row(b, 0) == ([BOS, USR, H, I_, END, AST, Y, O_, EOS], [0] * 6 + [1, 1, 1])


def test_implicit_plain_text_prompt_is_trls_common_prefix(tmp_path, byte_tok):
    """Anthropic/hh-rlhf's form: plain-text chosen / rejected sharing the dialogue so far; the
    split is TRL's extract_prompt (the space before the first difference starts the responses)."""
    from trl.data_utils import extract_prompt

    pair = {
        "chosen": "\n\nHuman: Is tea hot?\n\nAssistant: Yes, usually.",
        "rejected": "\n\nHuman: Is tea hot?\n\nAssistant: No.",
    }
    path = write_jsonl(tmp_path / "d.jsonl", [pair])
    b = one_batch(path, byte_tok, max_length=64, max_prompt_length=48, buckets=[64])
    want = extract_prompt(pair)
    assert want["chosen"] == " Yes, usually." and want["rejected"] == " No."
    prompt = [BOS, *want["prompt"].encode()]
    for i, side in enumerate(("chosen", "rejected")):
        response = [*want[side].encode(), EOS]
        assert row(b, i) == (prompt + response, [0] * len(prompt) + [1] * len(response))


def test_sft_messages_trains_on_last_assistant_turn(tmp_path, byte_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Yo"},
                ]
            }
        ],
    )
    b = one_batch(path, byte_tok, record_type="sft", max_length=16, max_prompt_length=12, buckets=[16])
    expected = [BOS, SYS, ord("S"), END, USR, H, I_, END, AST, Y, O_, EOS]
    assert row(b, 0) == (expected, [0] * 9 + [1, 1, 1])
    assert b.example_valid_E.tolist() == [1]


@pytest.mark.parametrize("key", ["response", "completion"])
def test_sft_prompt_response_or_completion(tmp_path, byte_tok, key):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", key: "Yo"}])
    b = one_batch(path, byte_tok, record_type="sft", max_length=16, max_prompt_length=8, buckets=[16])
    assert row(b, 0) == ([BOS, H, I_, Y, O_, EOS], [0, 0, 0, 1, 1, 1])


def test_vocab_table_is_what_the_tokenizer_uses(llama_tok):
    # Guards the hand-written expectations above against a drifting test tokenizer.
    assert llama_tok.convert_tokens_to_ids(["fine", "<|eot_id|>"]) == [LLAMA_VOCAB["fine"], 5]
