"""What `alignjax eval` sweeps and how it scores: grid points and labelled rewards.

A grid point is a name, the conditioning fields it adds to every prompt record
(`weights` for MO-ODPO, `system` / `user_info` for MetaAlign-style conditions), and
`targets`: the weight it asks of each objective, which steerability correlates
with that objective's score. An objective is a `LabelledReward`; the label (default:
the reward's registry name) is what weights and targets refer to.

Condition spec (YAML or JSON):

    system: "Follow the user's stated preference."      # default for every condition
    conditions:
      short:  {user_info: "I prefer short answers.", targets: {length: 0}}
      long:   {user_info: "I prefer long, detailed answers.", targets: {length: 1}}
      p_long: {user_id: user_long, targets: {length: 1}}    # a P-DPO user, with a target

Reward spec (YAML or JSON): a list of `{label: ..., name: ..., **kwargs}`.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import yaml

from alignjax.rewards.functions import REWARDS, Reward, build_reward

_CONDITION_FIELDS = ("system", "user_info", "weights", "user_id")


@dataclasses.dataclass(frozen=True)
class GridPoint:
    name: str
    fields: dict[str, Any]  # conditioning merged into each prompt record
    targets: dict[str, float]  # objective label -> the weight this point asks for


@dataclasses.dataclass(frozen=True)
class LabelledReward:
    """One objective of a sweep: a reward under its label, scored on every sample."""

    label: str
    spec: dict[str, Any]  # {"name": registry name, **kwargs}, as rewards.build_reward takes
    reward: Reward


def weight_grid(objectives: list[str], steps: int) -> list[GridPoint]:
    """Every weight vector on the simplex with coordinates in {0, 1/(steps-1), ..., 1}.

    2 objectives, 5 steps: w_1 in {0, .25, .5, .75, 1} and w_2 = 1 - w_1, in order of w_1.
    """
    if len(objectives) < 2 or len(set(objectives)) != len(objectives):
        raise ValueError(f"--weights-grid {','.join(objectives)}: name at least two distinct objectives")
    if steps < 2:
        raise ValueError(f"--grid-steps={steps}: need at least 2 (the two ends of each weight)")
    n = steps - 1
    points = []
    for counts in itertools.product(range(n + 1), repeat=len(objectives)):
        if sum(counts) != n:
            continue
        weights = {k: c / n for k, c in zip(objectives, counts)}
        name = ",".join(f"{k}={w:g}" for k, w in weights.items())
        points.append(GridPoint(name, {"weights": weights}, dict(weights)))
    return points


def _load(path: str) -> Any:
    try:
        with open(path) as f:
            return yaml.safe_load(f)  # JSON is YAML
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: spec file not found") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML/JSON ({e})") from None


def load_conditions(path: str, names: list[str] | None) -> list[GridPoint]:
    """The named conditions of a spec file (all of them, in file order, when `names` is None)."""
    spec = _load(path)
    if not isinstance(spec, dict) or not isinstance(spec.get("conditions"), dict):
        raise ValueError(
            f"{path}: a condition spec is a mapping with a 'conditions' mapping (see alignjax eval --help)"
        )
    table = spec["conditions"]
    names = list(table) if names is None else names
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"--conditions: {unknown} not in {path}; it defines {list(table)}")
    points = []
    for name in names:
        entry = dict(table[name] or {})
        targets = entry.pop("targets", {}) or {}
        extra = sorted(set(entry) - set(_CONDITION_FIELDS))
        if extra:
            raise ValueError(
                f"{path}: conditions.{name} has unknown keys {extra}; use {list(_CONDITION_FIELDS)} and targets"
            )
        fields = {k: spec[k] for k in _CONDITION_FIELDS if k in spec and k != "conditions"}
        fields.update(entry)
        try:
            targets = {str(k): float(v) for k, v in targets.items()}
        except (TypeError, ValueError, AttributeError):
            raise ValueError(
                f"{path}: conditions.{name}.targets must map objective labels to numbers"
            ) from None
        points.append(GridPoint(name, fields, targets))
    return points


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split on `sep` outside brackets and quotes, so list values keep their commas."""
    parts, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    return parts + [current]


def parse_reward_arg(text: str) -> tuple[str, dict[str, Any]]:
    """'[LABEL=]NAME[:key=value,...]' -> (label, spec); values are YAML ('[a, b]' is a list).

    e.g. 'length', 'formal=keyword_count:keywords=[Certainly]', 'length:unit=words,target=20'.
    """
    head, _, rest = text.partition(":")
    label, eq, name = head.partition("=")
    if not eq:
        label, name = head, head
    label, name = label.strip(), name.strip()
    if not name:
        raise ValueError(f"--reward {text!r}: no reward name; write [LABEL=]NAME[:key=value,...]")
    spec: dict[str, Any] = {"name": name}
    if rest:
        for item in _split_top_level(rest, ","):
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--reward {text!r}: {item!r} is not key=value (e.g. keywords=[please])")
            spec[key.strip()] = yaml.safe_load(raw) if raw else ""
    return label or name, spec


def build_labelled_rewards(reward_args: list[str], spec_path: str | None) -> list[LabelledReward]:
    """The sweep's objectives from `--reward` flags and/or a reward spec file; labels must be unique."""
    entries = [parse_reward_arg(a) for a in reward_args]
    if spec_path:
        items = _load(spec_path)
        if not isinstance(items, list):
            raise ValueError(f"{spec_path}: a reward spec is a list of {{label, name, ...kwargs}} mappings")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ValueError(f"{spec_path}[{i}]: {item!r} is not a mapping with a 'name'")
            item = dict(item)
            label = str(item.pop("label", item.get("name")))
            entries.append((label, item))
    if not entries:
        raise ValueError(f"no rewards: give --reward NAME (known: {sorted(REWARDS)}) or --rewards-spec FILE")
    labels = [label for label, _ in entries]
    duplicated = sorted({x for x in labels if labels.count(x) > 1})
    if duplicated:
        raise ValueError(
            f"reward labels {duplicated} are used twice; name them apart with --reward LABEL=NAME:..."
        )
    return [
        LabelledReward(label, spec, build_reward(spec, where=f"reward {label!r}")) for label, spec in entries
    ]
