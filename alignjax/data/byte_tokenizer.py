"""A byte-level tokenizer built in code, for the quickstart: no files, no downloads.

Token id b (0..255) is the byte b, so ids are readable without a vocabulary:
`list("hi".encode())` is the encoding of "hi". Special tokens follow at 256+.
It is a real `transformers.PreTrainedTokenizerFast` with a chat template, so
`save_pretrained` next to a checkpoint and `AutoTokenizer.from_pretrained`
round-trip it like any model's tokenizer.

Chat format (one line per role marker, no newlines added):
  <bos><|system|>...<|end|><|user|>...<|end|><|assistant|>...<eos>
The assistant turn ends with <eos> itself, so EOS appears exactly once. Plain text
encodes with BOS first (`tokenizer(text)`), as Llama's tokenizer does.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
PAD_ID, BOS_ID, EOS_ID = 256, 257, 258
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '<|end|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def _byte_to_char() -> dict[int, str]:
    """The byte-level pre-tokenizer's byte -> printable character map.

    Printable Latin-1 bytes stand for themselves; the others (controls, space,
    ...) are shifted to code points 256+ in byte order, as the `tokenizers`
    ByteLevel pre-tokenizer does.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, shifted = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + shifted)
            shifted += 1
    return out


def make_byte_tokenizer():
    """A `PreTrainedTokenizerFast` over raw UTF-8 bytes with <bos>/<eos>/<pad> and roles."""
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _byte_to_char().items()}
    # BPE with no merges: every byte-character is its own token, id = byte value.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    # Encoding plain text adds BOS, as Llama's tokenizer does; the chat template writes its own.
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        model_max_length=1 << 20,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        PAD_ID,
        BOS_ID,
        EOS_ID,
    )
    return tokenizer
