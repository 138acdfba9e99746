"""Preference conditioning as prompt text (MetaAlign tiers, MO-ODPO weights, CUT judgments).

MetaAlign's three tiers map onto chat roles: tier 1 (the provider's preference,
`system`) and MO-ODPO's weight sentence go into the system message; tier 2
(`user_info`) and tier 3 (the query) fill the first user message through
`templates.user_info`. A prompt that already has a system message keeps it,
after the conditioning text. The chat template then places the roles, so the
same data works with any model.
"""

from __future__ import annotations

from alignjax.data.config import TemplateConfig
from alignjax.data.formats import Conditioning, Text
from alignjax.data.records import BadRecord


def condition_prompt(
    prompt: Text, cond: Conditioning, templates: TemplateConfig, judgment: str | None = None
) -> Text:
    """The prompt with its conditioning rendered in; plain text stays plain if it can.

    Plain text with system / user_info / weights becomes a conversation (those
    need the chat template's roles); a judgment on a plain prompt stays plain.
    """
    if isinstance(prompt, str) and not cond.any_text:
        if judgment is None:
            return prompt
        return _format(templates.judgment, "judgment", prompt=prompt, judgment=judgment)
    messages = (
        [dict(m) for m in prompt]
        if isinstance(prompt, list)
        else ([{"role": "user", "content": prompt}] if prompt else [])
    )
    system_parts = []
    if cond.system:
        system_parts.append(_format(templates.system, "system", system=cond.system))
    if cond.weights:
        system_parts.append(render_weights(cond.weights, templates))
    if cond.user_info:
        first_user = _find_role(messages, "user", first=True)
        query = messages[first_user]["content"] if first_user is not None else ""
        text = _format(templates.user_info, "user_info", user_info=cond.user_info, prompt=query)
        if first_user is None:
            messages.append({"role": "user", "content": text})
        else:
            messages[first_user]["content"] = text
    if judgment is not None:
        last_user = _find_role(messages, "user", first=False)
        if last_user is None:
            raise BadRecord("bad_conversation", "a judgment needs a user message to attach to")
        messages[last_user]["content"] = _format(
            templates.judgment, "judgment", prompt=messages[last_user]["content"], judgment=judgment
        )
    if system_parts:
        if messages and messages[0]["role"] == "system":
            system_parts.append(messages[0]["content"])
            messages = messages[1:]
        messages = [{"role": "system", "content": "\n\n".join(system_parts)}] + messages
    return messages


def render_weights(weights: dict, templates: TemplateConfig) -> str:
    """MO-ODPO's weight sentence, e.g. 'Answer so that ... 30% helpful, 70% harmless'."""
    if templates.weights is None:
        raise BadRecord("bad_weights", "the record has 'weights' but data.templates.weights is not set")
    expected = set(templates.objectives)
    if set(weights) != expected:
        raise BadRecord(
            "bad_weights",
            f"weights has objectives {sorted(weights)}, data.templates.weights expects {sorted(expected)}",
        )
    return _format(templates.weights, "weights", **{k: float(v) for k, v in weights.items()})


def _format(template: str, key: str, **fields) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"data.templates.{key}: {template!r} cannot be formatted with fields {sorted(fields)}: {e!r}"
        ) from e


def _find_role(messages: list, role: str, first: bool) -> int | None:
    idx = [i for i, m in enumerate(messages) if m["role"] == role]
    if not idx:
        return None
    return idx[0] if first else idx[-1]
