"""Offline in seconds, not after a minute of retries.

Without ``HF_HUB_OFFLINE`` and without a connection, every Hub lookup (model config, weights, image processor,
dataset) retries before failing: tens of seconds per name, then a traceback. Before loading anything that names a
Hub id, :func:`work_offline_if_the_hub_is_unreachable` tries one TCP connection to the Hub's endpoint (a few
seconds at most); when it fails, the process switches to offline mode (``huggingface_hub`` / ``datasets`` read their
local caches only), so cached models still load and the others fail at once, with one line
(:func:`not_cached_error`).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import huggingface_hub.constants
from transformers.utils import logging

logger = logging.get_logger(__name__)

#: seconds to wait for the Hub's endpoint to accept a connection
PROBE_TIMEOUT_S = 3.0


def offline() -> bool:
    """Whether the Hub libraries work from their caches only (``HF_HUB_OFFLINE``, or switched here)."""
    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def hub_unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Hub's endpoint cannot be reached (``None`` when a TCP connection to it opens within ``timeout``)."""
    endpoint = urlparse(huggingface_hub.constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    return None


#: set when :func:`go_offline` switched this process offline (the Hub was unreachable; not the user's setting)
SWITCHED: list[str] = []


def go_offline(reason: str = "") -> None:
    """Switch this process's Hub libraries to their local caches (what ``HF_HUB_OFFLINE=1`` does at start-up)."""
    SWITCHED[:] = [reason]
    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:  # datasets is a dependency; guarded for partial installs
        pass


def work_offline_if_the_hub_is_unreachable(hub_ids: list[str]) -> None:
    """When ``hub_ids`` (the Hub ids the run will load) is not empty and the Hub cannot be reached: offline mode,
    said in one warning."""
    if not hub_ids or offline():
        return
    reason = hub_unreachable_reason()
    if reason is not None:
        go_offline(reason)
        logger.warning(f"the Hub ({huggingface_hub.constants.ENDPOINT}) cannot be reached ({reason}): working offline, "
                       f"from the local cache only, for {', '.join(hub_ids)}")


def not_cached_error(name: str, role: str) -> ValueError:
    """The one-line error for a Hub id that is needed offline and is not in the local cache."""
    why = f"the Hub cannot be reached ({SWITCHED[0]})" if SWITCHED else "HF_HUB_OFFLINE is set"
    return ValueError(
        f"the {role} {name!r} is a Hub id, {why}, and it is not in the local cache "
        f"({huggingface_hub.constants.HF_HUB_CACHE}). Connect once to download it, or pass a local folder."
    )


__all__ = ["offline", "hub_unreachable_reason", "go_offline", "work_offline_if_the_hub_is_unreachable", "not_cached_error"]
