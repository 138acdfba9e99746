"""`alignjax bench quantize`: the logits error of an NF4 / int8 base (QLoRA) against the
full-precision base, on English text first and on uniformly random token ids second.

Text is what a trained model reads: its next-token distributions are peaked, so the error
on text is the one QLoRA users pay. Random ids make a trained model's distributions near
flat, where small logit shifts change the top token, so that second measurement
exaggerates the error; it is reported for comparison only. The text is
`ENGLISH_TEXT` or `--text-file`, tokenized with the model's tokenizer (a preset's is the
built-in byte tokenizer, as `model.preset` runs use), which decides whether BOS comes first.
"""

from __future__ import annotations

import numpy as np

from alignjax.core import hub, paths
from alignjax.core.configlib import apply_override

ENGLISH_TEXT = (
    "The harbour town wakes up slowly in winter. Before the sun has cleared the hills, the "
    "bakery on the corner has already been warm for three hours, and the smell of bread drifts "
    "down the empty street towards the water. The fishing boats that went out at night come "
    "back one by one, their engines loud in the still air, and the men on the quay call to "
    "each other as they tie the ropes and lift the first boxes onto the stones. Most of the "
    "catch is sold before breakfast. A woman from the hotel buys a basket of small fish for "
    "lunch, and a boy on a bicycle carries two crabs home in a bucket, holding it carefully "
    "with one hand.\n\n"
    "By nine o'clock the school bus has gone, the library has opened its doors, and the old "
    "clock above the post office has been wrong for exactly twenty minutes, as it has been "
    "for years. Nobody thinks of repairing it any more; people simply add the missing time "
    "in their heads. Visitors are rare at this season, but the few who come are usually "
    "looking for quiet. They walk along the cliff path to the lighthouse, stop at the bench "
    "where the wind is strongest, and read the names of ships that were lost on the rocks a "
    "century ago. In the afternoon the light turns grey and the sea becomes the colour of "
    "slate. The cafe fills with people who want something hot to drink, and the conversation "
    "moves from the weather to the price of fuel, from a wedding next month to the question "
    "of whether the council will ever build the new sea wall it has promised for so long.\n\n"
    "When evening comes, the lamps along the harbour are switched on, the boats prepare to go "
    "out again, and the baker goes to bed early, because tomorrow, like every other day, "
    "will begin long before anyone else is awake."
)

RANDOM_IDS_NOTE = (
    "uniformly random token ids: near-flat next-token distributions exaggerate the error; "
    "for comparison with numbers measured that way only"
)


def read_text_file(path: str) -> str:
    try:
        return paths.read_text(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--text-file {path}: cannot be read as UTF-8 text ({e})") from None


def text_tokens_1xL(tokenizer, text: str, length: int, where: str, vocab_size: int) -> np.ndarray:
    """The text's first `length` tokens as one row, as the tokenizer encodes it (BOS included
    where the tokenizer adds one)."""
    ids = list(tokenizer(text)["input_ids"])
    if len(ids) < length:
        raise ValueError(
            f"{where} is {len(ids)} tokens long under the model's tokenizer, too short for "
            f"--length {length}; pass a longer --text-file or a smaller --length"
        )
    ids = ids[:length]
    if max(ids) >= vocab_size:
        raise ValueError(
            f"{where}: the tokenizer makes id {max(ids)}, outside the model's vocab_size={vocab_size}"
        )
    return np.asarray([ids], np.int32)


def _load(args):
    """(the loaded model, its tokenizer, the report's description of the model)."""
    import jax

    from alignjax.convert.loading import ModelSection, load_model
    from alignjax.data.byte_tokenizer import make_byte_tokenizer
    from alignjax.data.load_tokenizer import load_tokenizer

    overrides: dict = {}
    for kv in args.override:  # config.json keys, parsed as config overrides are
        apply_override(overrides, kv)
    resolved = None
    if args.hf_path:
        resolved = hub.resolve(
            args.hf_path, revision=args.revision, key="--hf-path", revision_key="--revision"
        )
        section = ModelSection(hf_path=resolved.local_dir if resolved else args.hf_path)
    else:
        section = ModelSection(preset=args.preset, preset_overrides=overrides)
    loaded = load_model(section, jax.random.key(args.seed))
    model = {"hf_path": args.hf_path} if args.hf_path else {"preset": args.preset, "overrides": overrides}
    if resolved is not None:
        model["revision"] = resolved.commit
    tokenizer = load_tokenizer(loaded.tokenizer_dir) if loaded.tokenizer_dir else make_byte_tokenizer()
    return loaded, tokenizer, model


def measure(loaded, tokenizer, text: str, where: str, kinds, rows: int, length: int, seed: int) -> dict:
    """Per kind, the error on the text's first `length` tokens, then on `rows` x `length`
    random ids drawn with `seed`."""
    from alignjax.models.quantize_error import logits_errors

    vocab = loaded.cfg.vocab_size
    text_1xL = text_tokens_1xL(tokenizer, text, length, where, vocab)
    random_BxL = np.random.default_rng(seed).integers(0, vocab, size=(rows, length))
    errors = [logits_errors(loaded.params, loaded.cfg, [text_1xL, random_BxL], kind) for kind in kinds]
    return {
        "text": {"tokens_from": where, "results": [on_text for on_text, _ in errors]},
        "random_ids": {"tokens_from": RANDOM_IDS_NOTE, "results": [on_random for _, on_random in errors]},
    }


def quantize_report(args) -> dict:
    if args.text_file:
        text, where = read_text_file(args.text_file), f"--text-file {args.text_file}"
    else:
        text, where = ENGLISH_TEXT, "the built-in English paragraph (bench_quantize.ENGLISH_TEXT)"
    loaded, tokenizer, model = _load(args)
    measured = measure(loaded, tokenizer, text, where, args.kinds, args.batch, args.length, args.seed)
    return {"model": model, "seed": args.seed, **measured}
