"""The language-model backends, in order of preference: the primary server and its fallbacks.

`BackendChain` looks like one client (`apply_template`, `stream`, `health`, `continue_prompt`,
`base_url`) and delegates to the active backend; the supervisor (`supervisor.py`) switches it, to
the next reachable backend when the active one fails and back to the primary once it answers, with
one status line per switch. `detect_api()` tells llama-server's API from OpenAI's, and
`check_key_transport()` refuses to send a key in clear text over the network.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

import httpx

from .errors import SetupError
from .llm_client import LLAMACPP, OPENAI, LlamaClient, is_loopback

log = logging.getLogger(__name__)


def detect_api(url: str, requested: str = "auto", timeout_s: float = 2.0,
               api_key: str | None = None) -> tuple[str, str]:  # fmt: skip
    """(api, base URL) for a server URL: `requested` unless 'auto'; a path ending in /v1 is OpenAI's;
    otherwise llama-server answers /props; otherwise a server answering /v1/models is OpenAI's.
    A server that answers nothing yet is taken as llama-server (its URL has no /v1)."""
    base = url.rstrip("/")
    if requested == OPENAI:
        return OPENAI, base if base.endswith("/v1") else base + "/v1"
    if requested == LLAMACPP:
        return LLAMACPP, base
    if base.endswith("/v1"):
        return OPENAI, base
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(timeout=timeout_s, headers=headers, trust_env=not is_loopback(base)) as http:
            if http.get(base + "/props").status_code == 200:
                return LLAMACPP, base
            if http.get(base + "/v1/models").status_code == 200:
                return OPENAI, base + "/v1"
    except httpx.HTTPError:
        pass
    return LLAMACPP, base


def check_key_transport(url: str, api_key: str | None, allow_insecure: bool) -> None:
    """SetupError if `api_key` would travel in clear text (plain http) to another machine."""
    if api_key and urlsplit(url).scheme == "http" and not is_loopback(url) and not allow_insecure:
        raise SetupError(
            f"refusing to send the API key over plain http to {urlsplit(url).hostname}: use https, "
            "or --allow-insecure-key if the network is trusted"
        )


class BackendChain:
    """The backends in order; `active` answers. Thread-safe; `switch()` is for the supervisor."""

    def __init__(self, clients: list[LlamaClient]) -> None:
        if not clients:
            raise ValueError("a BackendChain needs at least one client")
        self.clients = clients
        self._lock = threading.Lock()
        self._index = 0  # guarded by _lock

    @property
    def index(self) -> int:
        with self._lock:
            return self._index

    @property
    def active(self) -> LlamaClient:
        with self._lock:
            return self.clients[self._index]

    @property
    def base_url(self) -> str:
        return self.active.base_url

    @property
    def api(self) -> str:
        return self.active.api

    def switch(self, index: int, reason: str) -> None:
        """Answer with backend `index` from now on; one status line saying why."""
        with self._lock:
            if index == self._index:
                return
            self._index = index
        log.warning("language model: now using %s (%s)", self.clients[index].describe(), reason)

    def apply_template(self, messages: list[dict]):
        return self.active.apply_template(messages)

    def stream(self, payload: dict, limits=None):
        return self.active.stream(payload, limits)

    def next_tokens(self, prompt: str, count: int = 20, timeout_s: float = 2.0) -> list[tuple[str, float]]:
        return self.active.next_tokens(prompt, count, timeout_s)

    def continue_prompt(self, prompt, said: str):
        return self.active.continue_prompt(prompt, said)

    def health(self, timeout_s: float = 2.0) -> tuple[bool, str]:
        return self.active.health(timeout_s)

    def close(self) -> None:
        for client in self.clients:
            client.close()
