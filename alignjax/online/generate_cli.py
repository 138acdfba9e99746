"""`alignjax generate`: sample responses from a trained model, prompted as training did.

    alignjax generate runs/quickstart --config configs/quickstart.yaml \\
        --system "Follow the user's stated preference." --user-info "Keep it casual." \\
        --prompt "Tell me about the kettle."

The prompt is rendered by the data pipeline with the run's templates and chat
template (`prompting.PromptRenderer`); P-DPO checkpoints get the user's soft tokens
(`--user-id`). A bare `--prompt` is one user turn of the chat template when the model
has one, as an instruct model expects; `--raw` sends the text as it is. Decoding is
greedy unless `--temperature` says otherwise, and stops at every EOS id the model's files
name (`stop_ids`). `generate_texts` is the same path as a function, for `alignjax eval`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import jax
import numpy as np

from alignjax.errors import run_command
from alignjax.online import sampler, soft_prompt
from alignjax.online.logit_filters import SamplingConfig
from alignjax.online.policy import USER_MODEL_KEY, Policy, load_policy
from alignjax.online.prompting import PromptRenderer, RenderedPrompt


def sampling_config(
    policy: Policy, max_new_tokens=128, temperature=1.0, top_k=0, top_p=1.0
) -> SamplingConfig:
    return SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_ids=policy.eos_ids,
        pad_id=policy.pad_id,
    )


def decode_response(policy: Policy, ids: Sequence[int]) -> str:
    """Text of generated ids, without the final EOS and other special tokens."""
    ids = list(ids)
    if ids and ids[-1] in policy.eos_ids:
        ids = ids[:-1]
    return policy.tokenizer.decode(ids, skip_special_tokens=True)


def _generate_ids(
    policy: Policy, sampling: SamplingConfig, rows: list[RenderedPrompt], rng
) -> list[list[int]]:
    prompts = [r.ids.tolist() for r in rows]
    user_params = policy.extras.get(USER_MODEL_KEY)
    n_slots = rows[0].n_user_slots
    if n_slots == 0:
        return sampler.generate(policy.params, policy.cfg, sampling, prompts, rng)
    if user_params is None:
        raise ValueError(
            f"{policy.source}: the run config reserves data.n_user_tokens={n_slots} user slots, but the "
            "checkpoint has no user_model; pass the config of the stage this checkpoint was trained in"
        )
    embeds_BxTxD = soft_prompt.soft_tokens_BxTxD(user_params, [r.user_index for r in rows])
    if embeds_BxTxD.shape[1] != n_slots:
        raise ValueError(
            f"the user model makes {embeds_BxTxD.shape[1]} soft tokens but data.n_user_tokens={n_slots}; "
            "pass the run config this checkpoint was trained with"
        )
    return soft_prompt.generate_with_soft_tokens(
        policy.params, policy.cfg, sampling, prompts, [r.n_bos for r in rows], embeds_BxTxD, rng
    )


def generate_texts(
    policy: Policy,
    renderer: PromptRenderer,
    records: Sequence[dict[str, Any]],
    sampling: SamplingConfig,
    *,
    seed: int = 0,
    num_samples: int = 1,
    batch_size: int = 64,
    where: str = "--prompt",
) -> list[list[str]]:
    """`num_samples` responses for each prompt record (see `prompting`), in record order.

    Rows go through the sampler in batches of `batch_size` (the last one padded with
    copies so every batch has one compiled shape); batch i draws with fold_in(seed, i),
    so a run is reproducible for a given (seed, batch_size).
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples={num_samples} and batch_size={batch_size} must be at least 1")
    rendered = [renderer.render(r, where, i) for i, r in enumerate(records)]
    rows = [p for p in rendered for _ in range(num_samples)]
    width = min(batch_size, len(rows))
    key = jax.random.key(seed)
    out: list[list[int]] = []
    for i, start in enumerate(range(0, len(rows), width)):
        chunk = rows[start : start + width]
        padded = chunk + [chunk[0]] * (width - len(chunk))
        out += _generate_ids(policy, sampling, padded, jax.random.fold_in(key, i))[: len(chunk)]
    texts = [decode_response(policy, ids) for ids in out]
    return [texts[k * num_samples : (k + 1) * num_samples] for k in range(len(records))]


def parse_weights(text: str) -> dict[str, float]:
    """'helpful=0.3,harmless=0.7' -> {'helpful': 0.3, 'harmless': 0.7}."""
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None or not np.isfinite(number) or number < 0:
            raise ValueError(
                f"--weights {text!r}: {item!r} is not objective=weight with a weight >= 0; "
                "write e.g. --weights helpful=0.3,harmless=0.7"
            )
        out[name.strip()] = number
    return out


def add_model_arguments(parser: argparse.ArgumentParser, default_temperature: float) -> None:
    """Flags `generate` and `eval` share: where the templates come from, and sampling."""
    parser.add_argument(
        "--config",
        help="the training config (YAML) the model was trained with: templates, "
        "chat template, user slots; default <run_dir>/config.yaml if the run saved one",
    )
    parser.add_argument(
        "--stage",
        help="which stage's data settings to use (default: the stage that wrote "
        "the checkpoint, else the last)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=default_temperature, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 keeps every token")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 keeps every token")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="rows per sampler call")
    parser.add_argument(
        "--user-vocab",
        help="P-DPO: the run's user-id vocabulary JSON (default: "
        "data.user_vocab_path, else rebuilt from the stage's train data as the trainer does)",
    )


def renderer_for(policy: Policy, args: argparse.Namespace) -> PromptRenderer:
    """The run's prompt rendering; P-DPO user ids map through the run's user vocabulary."""
    from alignjax.data.vocab import Vocab
    from alignjax.online.prompting import find_run_config, run_data_config, run_user_vocab

    config = args.config or find_run_config(policy.run_dir)
    stage = args.stage or policy.stage
    if getattr(args, "user_vocab", None):
        user_vocab = Vocab.load(args.user_vocab)
    else:
        user_vocab = run_user_vocab(config, stage, policy.run_dir)
    return PromptRenderer(run_data_config(config, stage), policy.tokenizer, user_vocab)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignjax generate",
        description="Sample responses from a trained model, prompted as in training.",
    )
    parser.add_argument(
        "model",
        help="a run directory, its checkpoints/ (latest step), one step directory, "
        "or a Hugging Face model directory",
    )
    parser.add_argument("--prompt", required=True, help="the user query")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="send the prompt text as it is; by default it is one user turn of the chat template "
        "(when the tokenizer or the run's data.chat_template has one)",
    )
    parser.add_argument("--system", help="MetaAlign tier 1: the provider's preference (system message)")
    parser.add_argument("--user-info", help="MetaAlign tier 2: the user's stated preference or persona")
    parser.add_argument("--weights", help="MO-ODPO objective weights, e.g. helpful=0.3,harmless=0.7")
    parser.add_argument("--user-id", help="P-DPO user id (unseen ids get the generic user)")
    parser.add_argument("--num-samples", type=int, default=1)
    # One answer, the model's most likely one: what a user checking a model expects to see.
    add_model_arguments(parser, default_temperature=0.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("generate", _generate, args)


def _conditioning(args: argparse.Namespace) -> dict[str, Any]:
    """The record's fields besides the prompt; checked before a model is loaded."""
    text_flags = [f for f in ("system", "user_info", "weights") if getattr(args, f) is not None]
    if args.raw and text_flags:
        flags = ", ".join("--" + f.replace("_", "-") for f in text_flags)
        raise ValueError(
            f"--raw sends the prompt as plain text, but {flags} can only be written into chat "
            "messages; drop --raw, or write that text into --prompt yourself"
        )
    fields = {k: getattr(args, k) for k in ("system", "user_info", "user_id") if getattr(args, k) is not None}
    if args.weights is not None:
        fields["weights"] = parse_weights(args.weights)
    return fields


def _generate(args: argparse.Namespace) -> int:
    conditioning = _conditioning(args)
    policy = load_policy(args.model)
    renderer = renderer_for(policy, args)
    # An instruct model answers a user turn; plain text would only be continued.
    chat = not args.raw and renderer.has_chat_template
    prompt = [{"role": "user", "content": args.prompt}] if chat else args.prompt
    record = {"prompt": prompt, **conditioning}
    sampling = sampling_config(policy, args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    texts = generate_texts(
        policy,
        renderer,
        [record],
        sampling,
        seed=args.seed,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
    )[0]
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
