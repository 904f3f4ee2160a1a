"""Is the Hugging Face hub reachable? Asked once, quickly, before anything that would download.

Without this check an offline `from_pretrained` retries for ~25 s before failing with a generic
message; llqa instead fails at once with one line naming the fix.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

OFFLINE_FIX = "connect to the network, point HF_HOME at a cache that already holds it, or pass a local copy"


def hub_offline_by_env() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """True unless offline mode is set or a TCP connection to the hub does not open within `timeout` s."""
    return not hub_offline_by_env() and _hub_answers(timeout)


@functools.lru_cache(maxsize=1)
def _hub_answers(timeout: float) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
