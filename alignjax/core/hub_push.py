"""A directory of results, uploaded to a Hub repository as one commit.

The repository is created when missing (`private` applies then), the branch `revision`
when missing (from the default branch). Weight files of an earlier upload that this one
does not hold are deleted in the same commit, so the repository never pairs new shards
with an old index. Credentials and endpoint are `huggingface_hub`'s: `HF_TOKEN` (or a
saved login) and `HF_ENDPOINT`.
"""

from __future__ import annotations

import logging

from alignjax.core import paths
from alignjax.core.hub import HubError, hub_error, repo_id_of

log = logging.getLogger("alignjax.hub")

# Files an upload replaces rather than keeps beside its own.
STALE_WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "*.bin")


def check_can_push(repo: str, key: str) -> str:
    """The repository id `repo` names, after checking a token is there to push with: a run
    that pushes when it ends learns of a missing token before it starts."""
    from huggingface_hub import get_token

    repo_id = repo_id_of(repo if repo.startswith("hf:") else f"hf:{repo}", key)
    if "/" not in repo_id:
        raise HubError(f"{key}={repo}: name the repository as ORG/NAME (your user name or an organisation)")
    if not get_token():
        raise HubError(
            f"{key}={repo}: pushing to the Hub needs a token with write access; set HF_TOKEN "
            "(or run hf auth login)"
        )
    return repo_id


def push_folder(
    folder: str,
    repo: str,
    *,
    key: str,
    revision_key: str,
    private: bool = False,
    revision: str | None = None,
    message: str,
) -> str:
    """Uploads every file below `folder` (local or a bucket URL) to `repo` at `revision`
    (default branch when None); returns the commit's URL. `key` and `revision_key` are the
    settings named in errors."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    repo_id = check_can_push(repo, key)
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=paths.local_copy(folder),
            revision=revision,
            commit_message=message,
            delete_patterns=list(STALE_WEIGHTS),
        )
    except Exception as e:  # the Hub's refusals become one line; others are bugs
        if isinstance(e, HfHubHTTPError) and e.response.status_code in (401, 403):
            raise HubError(
                f"{key}={repo}: the Hub refused the upload ({e.response.status_code}); HF_TOKEN must be "
                f"a token with write access to {repo_id}"
            ) from None
        error = hub_error(e, repo_id, revision, key, revision_key)
        if error is None:
            raise
        raise error from None
    log.info("%s: pushed %s to %s", key, folder, commit.commit_url)
    return commit.commit_url
