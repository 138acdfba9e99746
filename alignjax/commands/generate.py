"""`alignjax generate`: sample responses from a trained model, prompted as training did.

    alignjax generate runs/quickstart --config configs/quickstart.yaml \\
        --system "Follow the user's stated preference." --user-info "Keep it casual." \\
        --prompt "Tell me about the kettle."

The prompt is rendered with the run's templates and chat template; P-DPO checkpoints get
the user's soft tokens (`--user-id`). A bare `--prompt` is one user turn of the chat
template when the model has one, as an instruct model expects; `--raw` sends the text as
it is. Decoding is greedy unless `--temperature` says otherwise. The model and sampling
flags are shared with `alignjax eval`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from alignjax.core.errors import run_command
from alignjax.generation.policy import Policy, load_policy
from alignjax.generation.prompting import PromptRenderer
from alignjax.generation.responses import generate_texts, parse_weights, sampling_config
from alignjax.train.run_config import prompt_renderer


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
    parser.add_argument(
        "--revision", help="with a Hub name: its branch, tag or commit (default branch if unset)"
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
    """The run's prompt rendering, from `--config` / `--stage` / `--user-vocab` or the run."""
    return prompt_renderer(policy, args.config, args.stage, getattr(args, "user_vocab", None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignjax generate",
        description="Sample responses from a trained model, prompted as in training.",
    )
    parser.add_argument(
        "model",
        help="a run directory, its checkpoints/ (latest step), one step directory, "
        "a Hugging Face model directory, or a Hub name (ORG/NAME)",
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
    policy = load_policy(args.model, revision=args.revision)
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
