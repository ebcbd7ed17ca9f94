"""Where a checkpoint lives: a directory, a Hugging Face cache entry, or (optionally) the Hugging Face hub.

:func:`resolve` turns what a user types into a local directory:

1. an existing directory is used as it is;
2. a name ``"org/model"`` (or ``"model"``) is looked up in the Hugging Face
   cache, laid out as ``models--org--model/refs/<revision>`` (a file holding
   a commit hash) and ``models--org--model/snapshots/<commit>/`` (the files);
   ``revision`` may also be a commit hash naming a snapshot directly;
3. failing both, the files are downloaded with ``huggingface_hub`` when that
   optional package is installed (``pip install nptransformer[hub]``).

The cache is ``cache_dir`` when given, else ``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``, as Hugging Face's own
libraries choose it.
"""

from __future__ import annotations

import os
import re

DOWNLOAD_PATTERNS = ("config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "vocab.txt", "merges.txt",
                     "generation_config.json")
"""Files a download fetches: what the loaders read (torch pickles are left out)."""

_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def default_cache_dir() -> str:
    """The Hugging Face hub cache directory this process would use."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def resolve(name_or_path: str | os.PathLike, revision: str = "main", cache_dir: str | os.PathLike | None = None,
            download: bool = True) -> str:
    """A directory, or a hub name found in the cache (or downloaded) -> the local directory holding its files.

    A string that cannot be a hub name (an absolute path, several slashes)
    comes back unchanged, so that the loader names the missing file. Raises FileNotFoundError naming the places looked at when the name is
    nowhere and cannot be downloaded (``download=False``, or no
    ``huggingface_hub``).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a directory or a hub name (str), got {type(name_or_path).__name__}")
    path = os.fspath(name_or_path)
    if os.path.isdir(path) or not _NAME.match(path) or os.path.isabs(path):
        return path  # a directory, or a path that names none: the caller's loader says what is missing
    cache = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    snapshot = cached_snapshot(path, revision, cache)
    if snapshot is not None:
        return snapshot
    if download:
        try:
            import huggingface_hub
        except ImportError:
            huggingface_hub = None
        if huggingface_hub is not None:
            try:
                return huggingface_hub.snapshot_download(path, revision=revision, cache_dir=cache,
                                                         allow_patterns=list(DOWNLOAD_PATTERNS))
            except Exception as error:  # offline, unknown repository, private, ...: one error type for callers
                raise FileNotFoundError(f"{path!r} (revision {revision!r}) is not in the Hugging Face cache "
                                        f"{cache!r} and could not be downloaded: {error}") from error
    raise FileNotFoundError(
        f"{path!r} is not a directory and revision {revision!r} is not in the Hugging Face cache {cache!r}"
        + ("" if download else " (download=False)")
        + "; pass a checkpoint directory, or install huggingface_hub (pip install nptransformer[hub]) to download it")


def cached_snapshot(name: str, revision: str, cache_dir: str) -> str | None:
    """The snapshot directory of ``name`` at ``revision`` in a Hugging Face cache, or None when absent."""
    repo = os.path.join(cache_dir, "models--" + name.replace("/", "--"))
    ref = os.path.join(repo, "refs", revision)
    commit = revision
    if os.path.isfile(ref):
        with open(ref, encoding="utf-8") as f:
            commit = f.read().strip()
    snapshot = os.path.join(repo, "snapshots", commit)
    return snapshot if commit and os.path.isdir(snapshot) else None
