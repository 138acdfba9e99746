"""Names on the Hugging Face Hub, turned into local files: the one place that does it.

A model (or adapter) setting may hold a local directory, a bucket URL (`gs://...`) or a
Hub repository name, told apart without guessing:
- `hf:ORG/NAME` is always the Hub;
- a URL (`scheme://`) is a bucket, handled by `paths`;
- a path that exists here is local, even when it reads like `org/name` (a warning says
  so, and how to ask for the Hub instead);
- otherwise `ORG/NAME` (one slash, Hub name characters, not starting with `.`, `/`, `~`)
  is a Hub repository; anything else stays a local path, whose absence its reader reports.

A Hub model is downloaded with `huggingface_hub.snapshot_download` into the standard cache
(`HF_HOME` / `HF_HUB_CACHE`), which honours `HF_TOKEN`, `HF_HUB_OFFLINE` and `HF_ENDPOINT`
as every Hugging Face tool does. Only what alignjax reads is fetched (`MODEL_FILES`):
never `*.bin`, `*.pt` or a subfolder such as `original/`. Processes that share a cache
(several per host, or hosts on one shared disk) take turns on `huggingface_hub`'s lock per
file: one downloads it, the others wait and find it cached; a file appears under its name
only when complete. Processes with caches of their own do not wait for each other.

Every failure of the Hub (no such repository, a gated one without a token, no such
revision, offline without the files cached, no connection) becomes one `HubError` line
naming the setting, the repository and what to do.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

log = logging.getLogger("alignjax.hub")

HUB_PREFIX = "hf:"

# What a model directory needs here: config, generation config, tokenizer, safetensors
# weights with their index, and a PEFT adapter's two files.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "adapter_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
)
# Weights are read only when `weights`; the rest is small and always fetched.
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")
# A model directory is flat: subfolders (`original/`, `onnx/`, ...) hold other formats.
IGNORED_FILES = ("*/*",)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class HubError(ValueError):
    """A Hub name that cannot be turned into files; the message is one actionable line."""


@dataclasses.dataclass(frozen=True)
class HubModel:
    """What a Hub name resolved to: the repository, the commit SHA its revision pointed at,
    and the local snapshot directory of that commit."""

    repo_id: str
    commit: str
    local_dir: str


def _is_repo_id(text: str) -> bool:
    parts = text.split("/")
    return (
        len(parts) == 2
        and all(_NAME.fullmatch(p) for p in parts)
        and ".." not in text
        and "--" not in text
        and len(text) <= 96
    )


def repo_id_of(name: str, key: str) -> str | None:
    """The Hub repository `name` denotes (set as `key`), or None when it is a local path
    or a URL. `hf:` forces the Hub; an existing local path wins over a Hub name."""
    if name.startswith(HUB_PREFIX):
        repo_id = name[len(HUB_PREFIX) :].strip("/")
        if not _is_repo_id(repo_id) and not _NAME.fullmatch(repo_id):
            raise HubError(f"{key}={name}: {repo_id!r} is not a Hub repository name (ORG/NAME)")
        return repo_id
    if "://" in name:
        return None
    if os.path.exists(name):
        if _is_repo_id(name):
            log.warning(
                "%s=%s: the local directory %s is used; write %s%s for the Hub repository of that name",
                key,
                name,
                os.path.abspath(name),
                HUB_PREFIX,
                name,
            )
        return None
    return name if _is_repo_id(name) else None


def model_dir(
    name: str,
    *,
    revision: str | None = None,
    key: str = "model.hf_path",
    revision_key: str | None = None,
    weights: bool = True,
) -> str:
    """A local or bucket directory holding the model `name` names: `name` itself unless it
    is a Hub name, else its snapshot in the cache (without weights unless `weights`)."""
    resolved = resolve(name, revision=revision, key=key, revision_key=revision_key, weights=weights)
    return resolved.local_dir if resolved is not None else name


def resolve(
    name: str,
    *,
    revision: str | None = None,
    key: str = "model.hf_path",
    revision_key: str | None = None,
    weights: bool = True,
) -> HubModel | None:
    """Downloads the Hub model `name` at `revision` (default branch when None); None when
    `name` is a local path or URL (a `revision` is then an error: it would be ignored).
    `key` and `revision_key` are the settings named in errors."""
    revision_key = revision_key or _revision_key(key)
    repo_id = repo_id_of(name, key)
    if repo_id is None:
        if revision is not None:
            raise HubError(
                f"{revision_key}={revision}: {key}={name} is a local path or URL, which has no "
                f"revisions; unset {revision_key}, or write {HUB_PREFIX}{name} for a Hub repository"
            )
        return None
    patterns = list(MODEL_FILES if weights else [p for p in MODEL_FILES if p not in WEIGHT_FILES])
    local_dir = download(
        repo_id, revision=revision, key=key, revision_key=revision_key, allow_patterns=patterns
    )
    commit = os.path.basename(os.path.normpath(local_dir))
    if revision != commit:
        log.info("%s=%s: revision %s is commit %s", key, name, revision or "(default branch)", commit)
    return HubModel(repo_id, commit, local_dir)


def download(
    repo_id: str,
    *,
    revision: str | None,
    key: str,
    revision_key: str | None = None,
    allow_patterns: list[str] | None = None,
    repo_type: str = "model",
) -> str:
    """`snapshot_download` into the standard cache, with the Hub's errors turned into
    `HubError`; returns the snapshot directory."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            allow_patterns=allow_patterns,
            ignore_patterns=list(IGNORED_FILES) if repo_type == "model" else None,
        )
    except Exception as e:  # each Hub failure below becomes one line; others are bugs
        error = hub_error(e, repo_id, revision, key, revision_key or _revision_key(key), repo_type)
        if error is None:
            raise
        raise error from None


def _revision_key(key: str) -> str:
    """The setting that holds the revision of the name set as `key`: `model.revision` for
    `model.hf_path`, `<key>_revision` otherwise (`model.lora.from_peft_revision`)."""
    return key[: -len("hf_path")] + "revision" if key.endswith("hf_path") else f"{key}_revision"


def hub_error(
    e: Exception, repo_id: str, revision: str | None, key: str, revision_key: str, repo_type: str = "model"
) -> HubError | None:
    """The one-line `HubError` for a failure of the Hub client, or None if `e` is not one."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    kind = "dataset" if repo_type == "dataset" else "model"
    where = f"{key}: {kind} {repo_id}" + (f" at revision {revision}" if revision else "")
    page = f"{constants.ENDPOINT}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    token = "HF_TOKEN is set" if get_token() else "no HF_TOKEN is set"
    if isinstance(e, GatedRepoError):
        return HubError(
            f"{where}: the repository is gated and {token}; accept its conditions at {page} and set "
            "HF_TOKEN to a token of that account (hf auth login)"
        )
    if isinstance(e, RepositoryNotFoundError):
        return HubError(
            f"{where}: the Hub ({constants.ENDPOINT}) has no such repository, or it is private and "
            f"{token}; check the name, or set HF_TOKEN to a token that can read it"
        )
    if isinstance(e, RevisionNotFoundError):
        return HubError(
            f"{revision_key}={revision}: {kind} {repo_id} has no branch, tag or commit of that "
            f"name; see {page} for its revisions, or unset {revision_key} for the default branch"
        )
    if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        if constants.HF_HUB_OFFLINE:
            return HubError(
                f"{where}: HF_HUB_OFFLINE is set and the files are not in the cache "
                f"{constants.HF_HUB_CACHE}; run once with network (HF_HUB_OFFLINE unset) to cache "
                f"them, or point {key} at a local directory"
            )
        return HubError(
            f"{where}: the Hub ({constants.ENDPOINT}) cannot be reached and the files are not in "
            f"the cache {constants.HF_HUB_CACHE}; check the network (HF_ENDPOINT, proxies), or "
            "point the setting at a local directory"
        )
    if isinstance(e, HfHubHTTPError):
        return HubError(f"{where}: the Hub answered {e.response.status_code}: {str(e).splitlines()[0]}")
    return None
