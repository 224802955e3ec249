"""Whether a Hugging Face hub dataset can be fetched, asked once with a short timeout when a recipe is validated,
so that an unreachable hub or a misspelt id is a validation error, not a run that retries and then fails."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from functools import cache

TIMEOUT_S = 3.0  # the hub answers in well under a second when it is reachable at all


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@cache
def dataset_problem(hf_id: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """None when the hub has this dataset (or answers in a way that does not say it is missing), else why not,
    naming the offline switch."""
    url = f"{endpoint()}/api/datasets/{hf_id}"
    request = urllib.request.Request(url, method="HEAD", headers=_auth())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return f"the hub ({endpoint()}) has no dataset '{hf_id}' (or it is private): check the id"
        if exc.code in (401, 403):
            return f"the hub ({endpoint()}) refuses dataset '{hf_id}' ({exc.code}): a gated or private dataset needs HF_TOKEN"
        return None  # the hub answered: let the load itself say more
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return (
            f"the hub ({endpoint()}) could not be reached within {timeout_s:g} s ({reason}), and '{hf_id}' is not in the local "
            "datasets cache: connect, or set HF_HUB_OFFLINE=1 to use only the local cache"
        )


def _auth() -> dict[str, str]:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}
