"""Hugging Face hub datasets as rose inputs: `hf://OWNER/NAME[/CONFIG][@REVISION][:SPLIT]`.

A hub dataset is loaded with `datasets.load_dataset`, so it is read from the local Hugging Face
cache wherever `load_dataset` would find it. Before any network call the hub is probed with one
short TCP connect: without network (or under HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) the dataset is
loaded in `datasets`' offline mode, from the cache, and one that is not cached fails in about a
second with a hint, instead of after minutes of retries. Offline, a pinned revision is checked
against the commit the cached copy was built from. `datasets` is imported only here, on first use.
"""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import InputError

PREFIX = "hf://"
SYNTAX = "hf://OWNER/NAME[/CONFIG][@REVISION][:SPLIT]"
_SPEC = re.compile(r"hf://(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<config>[\w.-]+))?(?:@(?P<revision>[\w./-]+))?(?::(?P<split>[\w.:%\[\]+-]+))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubDataset:
    """One split of a hub dataset, as `load_dataset(repo, config, split=split, revision=revision)` takes it."""

    spec: str
    repo: str
    config: str | None
    revision: str | None
    split: str

    @property
    def name(self) -> str:
        return self.repo.split("/")[1]


def is_hub(source: object) -> bool:
    return str(source).startswith(PREFIX)


def parse_hub(spec: str) -> HubDataset:
    """`hf://trl-lib/Capybara:train` -> HubDataset; the split defaults to train and may be sliced
    as `load_dataset` slices it (`train[:1000]`)."""
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise InputError(spec, f"not a hub dataset; expected {SYNTAX}, e.g. hf://trl-lib/Capybara:train")
    return HubDataset(spec, match["repo"], match["config"], match["revision"], match["split"] or "train")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint (or the proxy in front of it) opens within
    `timeout` seconds; False at once under HF_HUB_OFFLINE. Torch-free, for models and datasets alike."""
    import huggingface_hub.constants

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlsplit(huggingface_hub.constants.ENDPOINT)
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    target = urlsplit(proxy) if proxy and not urllib.request.proxy_bypass(endpoint.hostname or "") else endpoint
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname, port), timeout=timeout).close()
    except (OSError, UnicodeError):
        return False
    return True


@contextmanager
def _offline_mode() -> Iterator[None]:
    """What HF_HUB_OFFLINE=1 sets at import, for one load: `datasets` then reads only its cache."""
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


@lru_cache(maxsize=32)
def load_split(spec: str) -> Any:
    """The `datasets.Dataset` of a hub split (loaded once per process: reading and digesting share it)."""
    import datasets
    import datasets.config
    import huggingface_hub.constants
    from datasets.exceptions import DatasetsError

    ref = parse_hub(spec)
    offline = datasets.config.HF_HUB_OFFLINE or not hub_reachable()
    try:
        with _offline_mode() if offline else nullcontext():
            dataset = datasets.load_dataset(ref.repo, ref.config, split=ref.split, revision=ref.revision)
    except ConnectionError as e:  # offline and not in the cache
        set_offline = datasets.config.HF_HUB_OFFLINE or huggingface_hub.constants.HF_HUB_OFFLINE
        why = ("offline mode is on (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)" if set_offline
               else f"the hub ({huggingface_hub.constants.ENDPOINT}) cannot be reached")
        raise InputError(spec, f"not in the local Hugging Face cache ({datasets.config.HF_DATASETS_CACHE}) and {why}; "
                         f"load it once where there is network (datasets.load_dataset('{ref.repo}', split='{ref.split}')) "
                         "and copy the cache folder here, or save it with save_to_disk and give that folder") from e
    except (OSError, ValueError, DatasetsError) as e:
        raise InputError(spec, f"cannot load ({type(e).__name__}: {_first_line(e)})") from e
    if offline and ref.revision is not None:
        _check_cached_revision(ref, dataset)
    return dataset


def _check_cached_revision(ref: HubDataset, dataset: Any) -> None:
    """Offline, `datasets` loads the newest cached copy whatever the revision: make sure it is the one asked for.

    The cache folder of a hub dataset is named after the commit it was built from; a branch or tag
    is turned into its commit through the hub cache's refs, as huggingface_hub records them."""
    import huggingface_hub.constants

    built_from = Path(dataset.cache_files[0]["filename"]).parent.name if dataset.cache_files else None
    wanted = ref.revision
    if not _COMMIT.fullmatch(wanted):
        owner, name = ref.repo.split("/")
        refs = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"datasets--{owner}--{name}" / "refs" / wanted
        if not refs.is_file():
            raise InputError(ref.spec, f"offline, the commit of revision '{wanted}' is unknown; pin the commit "
                             f"(hf://{ref.repo}@<40-hex commit>:{ref.split})")
        wanted = refs.read_text(encoding="utf-8").strip()
    if built_from != wanted:
        raise InputError(ref.spec, f"offline, the cached copy is commit {built_from}, not {wanted}; load the "
                         "revision once where there is network")


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
