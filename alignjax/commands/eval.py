"""`alignjax eval`: sweep preference conditions, score every response, measure steering.

    alignjax eval runs/mo --prompts prompts.jsonl --weights-grid helpful,harmless --grid-steps 5 \\
        --reward helpful=reward_model:path=/rm/helpful --reward harmless=reward_model:path=/rm/harmless \\
        --out eval/
    alignjax eval runs/quickstart --config configs/quickstart.yaml --prompts runs/quickstart/data/eval.jsonl \\
        --conditions short,long,formal,casual --condition-spec conditions.yaml \\
        --reward length --reward formal=keyword_count:keywords=[Certainly] --out eval/
    alignjax eval runs/pdpo --config configs/pdpo.yaml --pdpo-eval runs/pdpo/data/pdpo_eval.jsonl \\
        --users all --prompts prompts.jsonl --reward length --out eval/
    alignjax eval --fidelity pdpo runs/fidelity/pdpo runs/fidelity/pdpo_dpo --out eval/
    (a method's signature result against its baseline: alignjax eval --fidelity --help)

Every grid point (a weight vector, a named condition, or a P-DPO user) is added to
every prompt record, rendered as training rendered it, and sampled; each response is
scored by every objective (a labelled reward) against the *unconditioned* prompt, as
MO-ODPO scores (`alignjax.evaluation.sweep`). Written to --out:
  table.json    per point: conditioning, targets, n, mean and std of each objective,
                mean length; the non-dominated points; steerability per objective;
                P-DPO per-user accuracy when asked for
  samples.jsonl every response with its point, prompt and scores
  pareto.png    mean scores per point
Steerability of objective k is Spearman's rho between the weight a point asks of k
(its target) and k's score, over all samples of the points that set a target for k,
and over those points' means.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from alignjax.commands.generate import add_model_arguments, renderer_for
from alignjax.core.errors import run_command
from alignjax.evaluation import fidelity
from alignjax.evaluation import grid as eval_grid
from alignjax.evaluation import personalized as personalized_eval
from alignjax.evaluation.grid import GridPoint, LabelledReward
from alignjax.evaluation.pareto import plot_pareto
from alignjax.evaluation.sweep import read_prompts, summarise, sweep
from alignjax.generation.policy import Policy, load_policy
from alignjax.generation.prompting import PromptRenderer
from alignjax.generation.responses import sampling_config
from alignjax.train.config import load_config, stages
from alignjax.train.run_config import find_run_config, policy_stage


def _points(args: argparse.Namespace, user_vocab) -> tuple[str, list[GridPoint]]:
    chosen = [bool(args.weights_grid), bool(args.conditions or args.condition_spec), bool(args.users)]
    if sum(chosen) != 1:
        raise ValueError(
            "choose one sweep: --weights-grid A,B (MO-ODPO), --conditions/--condition-spec "
            "(conditions in the prompt), or --users (P-DPO user ids)"
        )
    if args.weights_grid:
        return "weights", eval_grid.weight_grid(
            [s.strip() for s in args.weights_grid.split(",")], args.grid_steps
        )
    if args.users:
        if user_vocab is None:
            raise ValueError(
                "--users needs a P-DPO run (its config reserves user slots); pass --config and --stage"
            )
        users = ["generic", *user_vocab.keys] if args.users == "all" else args.users.split(",")
        # The generic user is index 0: any id the vocabulary does not know.
        return "users", [GridPoint(u, {} if u == "generic" else {"user_id": u}, {}) for u in users]
    if not args.condition_spec:
        raise ValueError(
            "--conditions needs --condition-spec FILE giving each condition's system/user_info "
            "text and targets (see alignjax eval --help)"
        )
    names = args.conditions.split(",") if args.conditions else None
    return "conditions", eval_grid.load_conditions(args.condition_spec, names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignjax eval",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[1] + "\n" + eval_grid.__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "model", help="a run directory, its checkpoints/, one step directory, an HF directory or a Hub name"
    )
    parser.add_argument("--out", required=True, help="directory for table.json, samples.jsonl, pareto.png")
    parser.add_argument("--prompts", help="JSONL of prompt records ({'prompt': ...} per line)")
    parser.add_argument("--max-prompts", type=int, help="use the first N prompts")
    parser.add_argument("--num-samples", type=int, default=1, help="responses per prompt and grid point")
    sweep_group = parser.add_argument_group("the sweep (choose one)")
    sweep_group.add_argument(
        "--weights-grid", help="objective names of the run's weights template, e.g. helpful,harmless"
    )
    sweep_group.add_argument(
        "--grid-steps", type=int, default=5, help="values per weight: 5 -> 0, .25, .5, .75, 1"
    )
    sweep_group.add_argument("--conditions", help="names from --condition-spec (default: all of them)")
    sweep_group.add_argument(
        "--condition-spec", help="YAML/JSON: each condition's system / user_info and targets"
    )
    sweep_group.add_argument("--users", help="P-DPO user ids to generate for, comma-separated, or 'all'")
    parser.add_argument(
        "--reward",
        action="append",
        default=[],
        metavar="[LABEL=]NAME[:k=v,...]",
        help="an objective, e.g. length or formal=keyword_count:keywords=[Certainly]; repeatable",
    )
    parser.add_argument("--rewards-spec", help="YAML/JSON list of {label, name, **kwargs}")
    parser.add_argument(
        "--pdpo-eval", help="P-DPO: preference JSONL with user_id; adds per-user reward accuracy"
    )
    add_model_arguments(parser, default_temperature=1.0)
    return parser


def _pdpo_accuracy(policy: Policy, args, renderer: PromptRenderer, user_vocab) -> dict[str, Any]:
    config = args.config or find_run_config(policy.run_dir)
    if config is None or policy.run_dir is None or user_vocab is None:
        raise ValueError("--pdpo-eval needs a P-DPO training run directory and its --config")
    all_stages = stages(load_config(config))
    stage_name = args.stage or policy_stage(policy) or all_stages[-1].name
    stage = next((s for s in all_stages if s.name == stage_name), None)
    if stage is None:
        raise ValueError(f"{config}: no stage {stage_name!r}; pass --stage naming the P-DPO stage")
    ref_params = personalized_eval.load_reference(policy.run_dir, stage.name, policy)
    return personalized_eval.user_accuracies(
        policy,
        renderer.data_cfg,
        user_vocab,
        ref_params,
        args.pdpo_eval,
        stage.config.loss.beta,
        os.path.join(args.out, "user_vocab.json"),
        batch_size=min(args.batch_size, 16),
    )


def _print_summary(table: dict[str, Any]) -> None:
    labels = table.get("objectives", [])
    if labels:
        print("point".ljust(24) + "".join(f"{k:>22}" for k in labels) + f"{'chars':>9}")
    for row in table.get("points", []):
        cells = "".join(
            f"{row['scores'][k]['mean']:>12.3f} ± {row['scores'][k]['std']:<7.3f}" for k in labels
        )
        mark = " *" if row["name"] in table["pareto"] else ""
        print(row["name"][:24].ljust(24) + cells + f"{row['response_chars']:>9.1f}{mark}")
    for k, s in table.get("steerability", {}).items():
        print(
            f"steerability {k}: spearman over samples {s['samples']} (n={s['n_samples']}), "
            f"over grid means {s['grid_means']} (points={s['n_points']})"
        )
    for user, acc in table.get("pdpo_accuracy", {}).items():
        print(f"P-DPO accuracy {user}: {acc['accuracy']:.3f} (margin {acc['margin']:.3f}, n={acc['n']})")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--fidelity":  # a method's reproduction against its baseline
        return fidelity_main(argv[1:])
    args = build_parser().parse_args(argv)
    return run_command("eval", _evaluate, args)


def _evaluate(args: argparse.Namespace) -> int:
    objectives: list[LabelledReward] = []
    if args.reward or args.rewards_spec or not args.pdpo_eval:  # --pdpo-eval alone generates nothing
        objectives = eval_grid.build_labelled_rewards(args.reward, args.rewards_spec)
    policy = load_policy(args.model, revision=args.revision)
    renderer = renderer_for(policy, args)
    user_vocab = renderer.user_vocab
    os.makedirs(args.out, exist_ok=True)
    table: dict[str, Any] = {"model": policy.source, "step": policy.step, "stage": policy_stage(policy)}
    if args.pdpo_eval:
        table["pdpo_accuracy"] = _pdpo_accuracy(policy, args, renderer, user_vocab)
    if objectives:
        if not args.prompts:
            raise ValueError("--prompts FILE.jsonl is needed to generate (one {'prompt': ...} per line)")
        mode, points = _points(args, user_vocab)
        prompts = read_prompts(args.prompts, args.max_prompts)
        sampling = sampling_config(policy, args.max_new_tokens, args.temperature, args.top_k, args.top_p)
        samples, scores = sweep(
            policy,
            renderer,
            prompts,
            points,
            objectives,
            sampling,
            seed=args.seed,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
        )
        table.update(
            mode=mode,
            rewards={o.label: o.spec for o in objectives},
            num_prompts=len(prompts),
            num_samples=args.num_samples,
            sampling=vars(sampling) | {"eos_ids": list(sampling.eos_ids)},
        )
        table.update(summarise(points, objectives, samples, scores))
        with open(os.path.join(args.out, "samples.jsonl"), "w", encoding="utf-8") as f:
            for x in samples:
                f.write(json.dumps(x, ensure_ascii=False) + "\n")
        plot_pareto(table, os.path.join(args.out, "pareto.png"))
    with open(os.path.join(args.out, "table.json"), "w", encoding="utf-8") as f:
        json.dump(table, f, indent=1, ensure_ascii=False)
    _print_summary(table)
    print(f"wrote {args.out}/table.json" + (", samples.jsonl, pareto.png" if "points" in table else ""))
    return 0


def fidelity_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignjax eval --fidelity",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=fidelity.__doc__.split("\n\n", 1)[0],
    )
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, module in fidelity.REPRODUCTIONS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(p)
        p.add_argument("--out", required=True, help="directory for table.json, samples.jsonl, fidelity.png")
    return parser


def fidelity_main(argv: Sequence[str] | None = None) -> int:
    args = fidelity_parser().parse_args(argv)
    return run_command("eval --fidelity", _run_fidelity, args)


def _run_fidelity(args: argparse.Namespace) -> int:
    module = fidelity.REPRODUCTIONS[args.name]
    os.makedirs(args.out, exist_ok=True)
    table = module.measure(args)
    samples = table.pop("samples", None)
    if samples is not None:
        with open(os.path.join(args.out, "samples.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in samples)
    with open(os.path.join(args.out, "table.json"), "w", encoding="utf-8") as f:
        json.dump(table, f, indent=1, ensure_ascii=False)
    module.plot(table, os.path.join(args.out, "fidelity.png"))
    for line in module.report(table):
        print(line)
    print(f"wrote {args.out}/table.json, fidelity.png" + (", samples.jsonl" if samples is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
