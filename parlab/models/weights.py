"""Where pretrained weights come from, and the record a run keeps of them.

Three spellings name weights (for backbones and for PromptPAR's CLIP alike):

- a local file path (never downloaded);
- a named pretrained tag: ``"pretrained"`` for timm (the backbone name's own tag,
  ``resnet50.a1_in1k``) or one of open_clip's tags for CLIP (``"openai"``);
- ``"hf-hub:ORG/NAME"`` (optionally ``@REVISION``): a Hugging Face Hub repository.

The last two are fetched only by timm's / open_clip's own loaders through the
Hugging Face cache (``HF_HOME``, default ``~/.cache/huggingface``; ``HF_HUB_CACHE``
overrides its ``hub`` folder). ``HF_HUB_OFFLINE=1`` (huggingface_hub's own switch)
keeps them to the cache. A weight neither cached nor reachable is one error line
that says how to pre-fetch it on a connected machine (:func:`not_available_message`).

Before a loader may fetch, :func:`hub_or_cache` asks the hub endpoint (``HF_ENDPOINT``) for
an answer within :data:`HUB_PROBE_TIMEOUT` seconds. Without one, the loader runs as under
``HF_HUB_OFFLINE`` for that call only: a cached weight loads, and a missing one is the error
line at once, not after huggingface_hub's retries (five per file, 1 + 2 + 4 + 8 + 8 s apart,
for each file a loader tries: about 50 s for a timm weight when the network is down).

:func:`weights_record` is what a run writes down: the spelling, the file the
loader read and that file's sha256, so a later run can tell whether it starts from
the same bytes.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import pickle
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

from parlab.errors import ConfigError
from parlab.files import file_sha256

HUB_PREFIX = "hf-hub:"
PRETRAINED = "pretrained"
RANDOM = "none"  # random initialisation, said explicitly (as "" says it by default)
HUB_PROBE_TIMEOUT = 3.0  # seconds the hub endpoint has to answer before its weights are read from the cache only


class HubUnreachable(ConnectionError):
    """The hub endpoint gave no answer in time (no network, no DNS, a refused or silent connection)."""


def is_hub_id(spec: str | Path | None) -> bool:
    """Whether ``spec`` is an ``hf-hub:ORG/NAME`` id."""
    return isinstance(spec, str) and spec.startswith(HUB_PREFIX)


def split_hub_id(spec: str) -> tuple[str, str | None]:
    """``"hf-hub:ORG/NAME@REV"`` -> ``("ORG/NAME", "REV")`` (revision None when not given)."""
    body = spec[len(HUB_PREFIX):] if is_hub_id(spec) else spec
    repo, _, revision = body.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")) or "@" in revision:
        raise ConfigError(f"{spec!r}: a Hugging Face Hub id is hf-hub:ORG/NAME (optionally @REVISION)")
    return repo, revision or None


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder in use (``HF_HUB_CACHE``, else ``HF_HOME``/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def offline() -> bool:
    """huggingface_hub's ``HF_HUB_OFFLINE`` switch."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT) -> HubUnreachable | None:
    """Why the hub endpoint (``HF_ENDPOINT``, default https://huggingface.co) gave no answer within ``timeout``
    seconds, or None when it answered; any HTTP status counts as an answer (huggingface_hub then says more).

    One HEAD request through urllib, which honours the same proxy variables as huggingface_hub's client.
    """
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:  # a status: the server is there
        return None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
        return HubUnreachable(f"{endpoint} did not answer within {timeout:g} s ({reason(exc, root=True)})")


@contextlib.contextmanager
def hub_or_cache() -> Iterator[HubUnreachable | None]:
    """Around a timm / open_clip loader call that may fetch from the hub: the endpoint is asked first
    (:func:`hub_unreachable`, skipped under ``HF_HUB_OFFLINE``) and, if it does not answer, the call reads
    only the Hugging Face cache, as under ``HF_HUB_OFFLINE``, which is set back afterwards.

    Yields the endpoint's failure (to name in the error when the weight is not cached), or None.
    """
    from huggingface_hub import constants

    failure = None if offline() else hub_unreachable()
    if failure is None:
        yield None
        return
    # huggingface_hub reads its module-level switch at every request (constants.is_offline_mode()).
    before, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield failure
    finally:
        constants.HF_HUB_OFFLINE = before


def cached_hub_file(repo_id: str, filenames: Iterable[str], revision: str | None = None) -> Path | None:
    """The first of ``filenames`` present in the Hugging Face cache for ``repo_id``; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def safe_first(filename: str) -> list[str]:
    """The files timm and open_clip try for ``filename``, in their order: safetensors alternatives first."""
    if filename.endswith(".safetensors"):
        return [filename]
    alternatives = {"pytorch_model.bin": ["model.safetensors"],
                    "open_clip_pytorch_model.bin": ["open_clip_model.safetensors"]}.get(filename)
    if alternatives is None and filename.endswith((".bin", ".pth")):
        alternatives = [filename[:-4] + ".safetensors"]
    return [*(alternatives or []), filename]


def download_hint(repo_id: str, revision: str | None = None) -> str:
    """How to pre-fetch ``repo_id`` on a connected machine and bring it here."""
    rev = f" --revision {revision}" if revision else ""
    return (f"on a connected machine run `hf download {repo_id}{rev}` (older huggingface_hub: "
            f"`huggingface-cli download {repo_id}{rev}`), then copy its cache folder (HF_HOME, default "
            f"~/.cache/huggingface) to this machine and point HF_HOME at it")


def reason(exc: BaseException, limit: int = 160, root: bool = False) -> str:
    """A short one-line description of ``exc`` (hub errors span several lines); ``root``: of the error at the
    bottom of its chain of causes instead (the network error under "cannot find the requested files")."""
    seen = {id(exc)}
    while root and (exc.__cause__ or exc.__context__) is not None and id(exc.__cause__ or exc.__context__) not in seen:
        exc = exc.__cause__ or exc.__context__
        seen.add(id(exc))
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_failure(exc: BaseException, limit: int = 200) -> str:
    """Why a weights file did not load, in one line. torch's refusal (``weights_only=True``) of random bytes or
    of a pickle asking for other objects goes on to suggest ``weights_only=False``, which parlab never does:
    that case is named plainly."""
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
        return "not a weights archive, or one holding objects that could run code (never loaded)"
    return reason(exc, limit=limit)


def not_available_message(what: str, spec: str, repo_id: str, revision: str | None = None,
                          exc: BaseException | None = None, fetched: bool = True) -> str:
    """One line: weights ``spec`` for ``what`` are neither in the Hugging Face cache nor reachable, and how to
    pre-fetch them.

    ``exc``: the error fetching them gave (shown unless offline, where it only says "not cached"), or the
    :class:`HubUnreachable` of :func:`hub_or_cache`;
    ``fetched=False``: only the cache was looked at.
    """
    tail = ""
    if fetched and isinstance(exc, HubUnreachable):
        tail = f" and {exc}"
    elif fetched and offline():
        tail = " and HF_HUB_OFFLINE is set"
    elif fetched:
        tail = " and could not be fetched" + (f" ({reason(exc, root=True)})" if exc is not None else "")
    return (f"{spec!r} weights for {what} (Hugging Face repo {repo_id}) are not in the Hugging Face cache "
            f"({hub_cache_dir()}){tail}. To use them offline, {download_hint(repo_id, revision)}")


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says a file could not be fetched: not cached, offline, no network,
    no such repository or file, access refused."""
    kinds: list[type] = [urllib.error.URLError, ConnectionError, TimeoutError]
    try:
        from huggingface_hub import errors as hub_errors

        kinds += [hub_errors.HfHubHTTPError, hub_errors.LocalEntryNotFoundError, hub_errors.EntryNotFoundError,
                  hub_errors.OfflineModeIsEnabled, hub_errors.RepositoryNotFoundError]
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of timm and open_clip
        pass
    for module, name in (("httpx", "HTTPError"), ("requests", "RequestException")):
        loaded = sys.modules.get(module)  # an error of a library nobody imported cannot have happened
        if loaded is not None and isinstance(getattr(loaded, name, None), type):
            kinds.append(getattr(loaded, name))
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, tuple(kinds)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def weights_record(spec: str, resolved_path: str | Path | None, source: str | None = None) -> dict:
    """What a run records about the weights it started from.

    ``{"id": spec, "path": str | None, "sha256": str | None}``; ``resolved_path`` is the file the loader
    read (a local file, or the Hugging Face cache file behind a tag or hub id), None for random weights.
    ``source`` (added as ``"source"`` when given) names where a tag resolved to, e.g.
    ``"hf-hub:timm/resnet50.a1_in1k"`` for backbone ``resnet50`` with ``weights="pretrained"``.
    """
    record = {"id": spec,
              "path": None if resolved_path is None else str(resolved_path),
              "sha256": None if resolved_path is None else file_sha256(resolved_path)}
    if source is not None:
        record["source"] = source
    return record
