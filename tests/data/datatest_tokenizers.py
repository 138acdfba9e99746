"""Tiny word-level tokenizers with real chat templates, built in code (no downloads).

Their vocabularies are written out here, so tests can state expected ids by
hand (`LLAMA_VOCAB["user"]`) instead of asking the tokenizer.
"""

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

WORDS = (
    "\n system user assistant Hi Hello Bye there How are you ? . ! , I am fine good bad "
    "Be brief kind Alice likes cats dogs The response should match this judgment : "
    "Too rude polite Answer so that your is % helpful harmless 30 70 0 100 yes no "
    "User information Query a b c d e f g h"
).split(" ")
WORDS = ["\n"] + [w for w in WORDS if w and w != "\n"]

LLAMA_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<pad>",
]
LLAMA_VOCAB = {t: i for i, t in enumerate(["[UNK]"] + LLAMA_SPECIALS + WORDS)}
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
QWEN_VOCAB = {t: i for i, t in enumerate(["[UNK]"] + QWEN_SPECIALS + WORDS)}
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _word_level(vocab, specials):
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    # Words, single punctuation and newlines are tokens; spaces separate them.
    core.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"\n|[A-Za-z0-9]+|[^A-Za-z0-9\s]"), behavior="removed", invert=True
    )
    core.add_special_tokens(specials)
    return core


def make_llama_like(eos_token="<|eot_id|>"):
    """Llama-3-style: encoding plain text adds BOS (its post-processor), and the chat
    template writes BOS itself; turns end with <|eot_id|>."""
    core = _word_level(LLAMA_VOCAB, LLAMA_SPECIALS)
    bos = ("<|begin_of_text|>", LLAMA_VOCAB["<|begin_of_text|>"])
    core.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[bos]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|begin_of_text|>",
        eos_token=eos_token,
        pad_token="<pad>",
    )
    tok.chat_template = LLAMA_TEMPLATE
    return tok


def make_qwen_like():
    """Qwen-style: no BOS at all; turns end with <|im_end|> and a newline."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_word_level(QWEN_VOCAB, QWEN_SPECIALS),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tok.chat_template = QWEN_TEMPLATE
    return tok


def llama_ids(*tokens):
    return [LLAMA_VOCAB[t] for t in tokens]


def qwen_ids(*tokens):
    return [QWEN_VOCAB[t] for t in tokens]
