"""Checkpoints: a model, its optimizer, its schedule, the random state and the step in one ``.npz``.

Resuming must be invisible: training k steps, saving, loading into freshly
built objects and training on gives bit-for-bit the weights of a run that
never stopped. That needs more than the weights. Adam's moments, the
schedule's step count and the state of every random generator (dropout
masks come from :data:`~nptransformer.backend.default_generator`, batches
usually from a generator of their own) all go into the file.

Layout of the archive (plain NumPy arrays, readable without pickle)::

    meta                 JSON (a 0-d string array): format tag and version, the
                         model's class name and config, step, JSON extras,
                         optimizer hyperparameters and step counts, schedule
                         state, generator states
    model/<name>         each entry of model.state_dict() (PyTorch's names)
    optimizer/<i>/<key>  optimizer state arrays of parameter i (exp_avg, ...)
    extra/<name>         array-valued extras

The file is written to a temporary name and renamed into place
(:func:`nptransformer._atomic.atomic_write`), so a crash mid-save leaves the
previous checkpoint whole. Loading checks everything (format, architecture,
parameter names and shapes, optimizer and schedule types) before it changes
anything.

>>> import os, tempfile
>>> from nptransformer import GPT
>>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
>>> model = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8)
>>> save_checkpoint(path, model, step=7, note="hello")
>>> load_checkpoint(path, GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8))
{'step': 7, 'note': 'hello'}
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import zipfile
from typing import Any, BinaryIO

import numpy as np

from . import __version__, backend
from ._checks import check_int_at_least, is_array
from ._atomic import atomic_write
from .backend import Generator, to_numpy

FORMAT = "nptransformer-checkpoint"
VERSION = 1
_SCALARS = (bool, int, float, str, type(None))


def model_config(model: Any) -> dict[str, Any]:
    """The constructor arguments that define ``model``'s architecture, as a JSON-able dict.

    A model's own ``config`` (a dict, a dataclass, or a method returning
    one) wins. Otherwise: every constructor parameter the model keeps as an
    attribute of the same name with a plain value (``GPT``'s vocab_size,
    n_layer, d_model ...). Used to refuse a checkpoint of another architecture.
    """
    config = getattr(model, "config", None)
    if callable(config):
        config = config()
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict):
        names = [n for n in inspect.signature(type(model).__init__).parameters if n != "self"]
        config = {n: getattr(model, n) for n in names if isinstance(getattr(model, n, ...), _SCALARS)}
    return json.loads(json.dumps(config, default=str))  # tuples -> lists, as they come back from the file


def _write(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    np.savez(f, **arrays)


def save_checkpoint(path: str | os.PathLike, model: Any, optimizer: Any = None, step: int = 0, schedule: Any = None,
                    generator: Generator | None = None, **extra: Any) -> None:
    """Write ``model`` (and optionally ``optimizer``, ``schedule``) at ``step`` to ``path``, atomically.

    The state of :data:`backend.default_generator` is always saved; pass the
    ``generator`` that draws your batches to save it too. ``extra`` values
    are JSON-able (numbers, strings, lists, dicts) or arrays; they come back
    from :func:`load_checkpoint`.
    """
    check_int_at_least("step", step, 0)
    if generator is not None and not isinstance(generator, Generator):
        raise TypeError(f"generator must be a nptransformer.backend.Generator or None, got {type(generator).__name__}")
    arrays = {f"model/{k}": to_numpy(v) for k, v in model.state_dict().items()}
    json_extra, array_extra = {}, []
    for key, value in extra.items():
        if is_array(value):
            arrays[f"extra/{key}"] = to_numpy(value)
            array_extra.append(key)
            continue
        try:
            json_extra[key] = json.loads(json.dumps(value))
        except TypeError:
            raise TypeError(f"extra {key!r} must be JSON-able or an array, got {type(value).__name__}") from None
    meta = {
        "format": FORMAT, "version": VERSION, "library_version": __version__, "step": step,
        "model": {"class": type(model).__name__, "config": model_config(model)},
        "extra": json_extra, "extra_arrays": array_extra,
        "optimizer": None if optimizer is None else _optimizer_meta(optimizer, arrays),
        "schedule": None if schedule is None else {"class": type(schedule).__name__, "state": schedule.state_dict()},
        "rng": {"default": backend.default_generator.state(),
                "generator": None if generator is None else generator.state()},
    }
    arrays["meta"] = np.asarray(json.dumps(meta))
    with atomic_write(path) as f:
        _write(f, arrays)


def _optimizer_meta(optimizer: Any, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Puts the state arrays into ``arrays``; returns the JSON part (hyperparameters, step counts)."""
    sd = optimizer.state_dict()
    scalars: dict[str, dict[str, int]] = {}
    for i, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, int):
                scalars.setdefault(str(i), {})[key] = value
            else:
                arrays[f"optimizer/{i}/{key}"] = to_numpy(value)
    return {"class": type(optimizer).__name__, "param_groups": sd["param_groups"], "scalars": scalars}


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of a checkpoint, fully read and checked; nothing is loaded into any object.

    Raises ValueError for a file that is truncated, corrupt, not an ``.npz``,
    not written by :func:`save_checkpoint`, or of a newer format version.
    """
    path = os.fspath(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        arrays = None
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}  # reading every member checks its CRC
    except (FileNotFoundError, IsADirectoryError):
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read checkpoint {path!r}: truncated, corrupt or not a .npz archive ({e})") from e
    if arrays is None:
        raise ValueError(f"{path!r} is not an nptransformer checkpoint: it holds one array, not an .npz archive")
    if "meta" not in arrays:
        raise ValueError(f"{path!r} is not an nptransformer checkpoint: it has no 'meta' entry "
                         f"(entries: {sorted(arrays)[:8]})")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except ValueError as e:
        raise ValueError(f"{path!r} is not an nptransformer checkpoint: its 'meta' entry is not JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        tag = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path!r} is not an nptransformer checkpoint: format tag {tag!r}, expected {FORMAT!r}")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise ValueError(f"{path!r} has checkpoint format version {meta.get('version')!r}; this nptransformer "
                         f"({__version__}) reads versions up to {VERSION}")
    _check_meta(path, meta, arrays)
    return meta, arrays


#: What every checkpoint's meta holds, and the type of each entry (None allowed where a part was not saved).
_META_ENTRIES = {"model": dict, "optimizer": (dict, type(None)), "schedule": (dict, type(None)), "rng": dict,
                 "step": int, "extra": dict, "extra_arrays": list}


def _check_meta(path: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """A meta entry missing or of the wrong type, or an array that is not numbers, is a damaged checkpoint."""
    for key, kind in _META_ENTRIES.items():
        if not isinstance(meta.get(key), kind):
            raise ValueError(f"checkpoint {path!r} is damaged: its meta has {key!r} = {meta.get(key)!r}"
                             if key in meta else f"checkpoint {path!r} is damaged: its meta has no {key!r} entry")
    for key in ("class", "config"):
        if key not in meta["model"]:
            raise ValueError(f"checkpoint {path!r} is damaged: its meta's 'model' has no {key!r} entry")
    if not {"default", "generator"} <= meta["rng"].keys():
        raise ValueError(f"checkpoint {path!r} is damaged: its meta's 'rng' needs 'default' and 'generator'")
    for key, value in arrays.items():
        if value.dtype.kind not in "biuf":
            raise ValueError(f"checkpoint {path!r} is damaged: array {key!r} has dtype {value.dtype}, not numbers")


def _check_architecture(path: str, meta: dict[str, Any], arrays: dict[str, np.ndarray], model: Any) -> dict:
    saved, cls = meta["model"], type(model).__name__
    config = model_config(model)
    if saved["class"] != cls:
        raise ValueError(f"checkpoint {path!r} holds a {saved['class']} ({_fmt(saved['config'])}); "
                         f"cannot load it into a {cls} ({_fmt(config)})")
    differ = [f"{k}: checkpoint {saved['config'].get(k)!r}, model {config.get(k)!r}"
              for k in sorted(set(config) | set(saved["config"])) if saved["config"].get(k) != config.get(k)]
    if differ:
        raise ValueError(f"checkpoint {path!r} holds a {cls} of another architecture: " + "; ".join(differ))
    state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)}, model {own[k]}"
              for k in own if k in state and tuple(state[k].shape) != own[k]]
    if missing or unexpected or shapes:
        raise ValueError(f"checkpoint {path!r} does not fit this {cls}: missing {missing}, unexpected "
                         f"{unexpected}, shape mismatches {shapes}")
    return state


def _fmt(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in config.items())


def _optimizer_state(path: str, meta: dict[str, Any], arrays: dict[str, np.ndarray], optimizer: Any) -> dict:
    saved = meta["optimizer"]
    if saved is None:
        raise ValueError(f"checkpoint {path!r} has no optimizer state, but an optimizer was given to load it into")
    if saved["class"] != type(optimizer).__name__:
        raise ValueError(f"checkpoint {path!r} holds {saved['class']} state; cannot load it into a "
                         f"{type(optimizer).__name__}")
    state: dict[int, dict[str, Any]] = {int(i): dict(s) for i, s in saved["scalars"].items()}
    for key, value in arrays.items():
        if key.startswith("optimizer/"):
            _, i, name = key.split("/", 2)
            state.setdefault(int(i), {})[name] = value
    groups = []
    for group, own in zip(saved["param_groups"], optimizer.param_groups):
        # JSON turned tuples (Adam's betas) into lists; give them back their type.
        groups.append({k: tuple(v) if isinstance(own.get(k), tuple) else v for k, v in group.items()})
    groups += saved["param_groups"][len(groups):]  # a group-count mismatch is reported by load_state_dict
    return {"state": state, "param_groups": groups}


def load_checkpoint(path: str | os.PathLike, model: Any, optimizer: Any = None, schedule: Any = None,
                    generator: Generator | None = None) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into ``model`` (and ``optimizer``, ``schedule``, ``generator``).

    Also restores :data:`backend.default_generator`. Returns
    ``{"step": step, **extra}``. Raises ValueError, before changing
    anything, when the file is unreadable or foreign, was written for
    another architecture (class, config, parameter names or shapes), or
    lacks a requested optimizer, schedule or generator state.
    """
    path = os.fspath(path)
    meta, arrays = read_checkpoint(path)
    state = _check_architecture(path, meta, arrays, model)
    optim_state = None if optimizer is None else _optimizer_state(path, meta, arrays, optimizer)
    if schedule is not None:
        saved = meta["schedule"]
        if saved is None or saved["class"] != type(schedule).__name__:
            found = "no schedule" if saved is None else f"a {saved['class']}"
            raise ValueError(f"checkpoint {path!r} holds {found}; cannot load it into a {type(schedule).__name__}")
    if generator is not None and meta["rng"]["generator"] is None:
        raise ValueError(f"checkpoint {path!r} saved no generator state, but a generator was given to restore")
    if optim_state is not None:
        optimizer.load_state_dict(optim_state)
    if schedule is not None:
        schedule.load_state_dict(meta["schedule"]["state"])
    model.load_state_dict(state)
    backend.default_generator.set_state(meta["rng"]["default"])
    if generator is not None:
        generator.set_state(meta["rng"]["generator"])
    extras = dict(meta["extra"])
    extras.update({k: arrays[f"extra/{k}"] for k in meta["extra_arrays"]})
    return {"step": meta["step"], **extras}
