"""Looking at attention: collect every layer's attention maps, draw them as heatmaps.

Run a forward with ``need_weights=True``; every ``MultiheadAttention`` then
keeps its probabilities (B, H, Tq, Tk) in ``attn_weights``, and
:func:`attention_maps` gathers them by module name. :func:`plot_attention`
draws one map (or one per head). matplotlib is optional and imported only when
something is drawn (``pip install nptransformer[viz]``).

>>> import numpy as np
>>> from nptransformer import GPT
>>> model = GPT(vocab_size=11, block_size=8, n_layer=2, n_head=2, d_model=8)
>>> _ = model(np.array([[1, 2, 3]]), need_weights=True)
>>> {name: w.shape for name, w in attention_maps(model).items()}
{'blocks.0.self_attn': (1, 2, 3, 3), 'blocks.1.self_attn': (1, 2, 3, 3)}

docs/attention.md shows the maps of a trained reversal model and a character GPT.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

import numpy as np

from . import backend
from .nn.attention import MultiheadAttention


def attention_maps(model: Any) -> dict:
    """{module name: attention probabilities (B, H, Tq, Tk)} of every attention module that kept them.

    Names are those of ``model.named_modules()`` (``blocks.0.self_attn``,
    ``transformer.decoder.layers.1.multihead_attn`` ...), in model order.
    Empty unless the last forward ran with ``need_weights=True``.
    """
    return {name: m.attn_weights for name, m in model.named_modules()
            if isinstance(m, MultiheadAttention) and m.attn_weights is not None}


def _pyplot() -> Any:
    try:
        return importlib.import_module("matplotlib.pyplot")
    except ImportError as e:
        raise ImportError("plotting attention needs matplotlib: pip install nptransformer[viz]") from e


def plot_attention(weights: Any, x_labels: Sequence[str] | None = None, y_labels: Sequence[str] | None = None,
                   ax: Any = None, title: str | None = None, cmap: str = "viridis", colorbar: bool = True) -> Any:
    """Heatmap of attention probabilities: rows are queries, columns keys.

    ``weights``: (Tq, Tk), or (H, Tq, Tk) for one panel per head, an array of
    any backend. ``x_labels`` (Tk,) name the keys, ``y_labels`` (Tq,) the
    queries (e.g. the tokens). ``ax``: a matplotlib Axes for a single map
    (default: a new figure). The colour scale runs from 0 to 1, so maps are
    comparable across layers and heads. Returns the Axes (a list of them for
    H heads).
    """
    w = backend.to_numpy(weights) if not isinstance(weights, np.ndarray) else weights
    if w.ndim not in (2, 3):
        raise ValueError(f"weights must have shape (Tq, Tk) or (H, Tq, Tk), got {w.shape}; pick one batch row "
                         "(and head) of the (B, H, Tq, Tk) maps")
    for name, labels, size in (("x_labels", x_labels, w.shape[-1]), ("y_labels", y_labels, w.shape[-2])):
        if labels is not None and len(labels) != size:
            raise ValueError(f"{name} must have {size} entries (one per {'key' if name[0] == 'x' else 'query'}), "
                             f"got {len(labels)}")
    plt = _pyplot()
    if w.ndim == 3:
        if ax is not None:
            raise ValueError("ax is for a single (Tq, Tk) map; (H, Tq, Tk) weights get a new figure, "
                             "one panel per head")
        fig, axes = plt.subplots(1, w.shape[0], figsize=(3.2 * w.shape[0], 3.4), squeeze=False, layout="constrained")
        for h, a in enumerate(axes[0]):
            _heatmap(a, w[h], x_labels, y_labels, f"head {h}", cmap)
            if h:  # the rows are the same queries in every panel: label them once
                a.set_ylabel("")
                a.tick_params(labelleft=False)
        if title:
            fig.suptitle(title)
        if colorbar:
            fig.colorbar(axes[0][0].images[0], ax=list(axes[0]), shrink=0.8)
        return list(axes[0])
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    image = _heatmap(ax, w, x_labels, y_labels, title, cmap)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, shrink=0.8)
    return ax


def _heatmap(ax: Any, w: np.ndarray, x_labels: Any, y_labels: Any, title: str | None, cmap: str) -> Any:
    image = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    if x_labels is not None:
        ax.set_xticks(range(len(x_labels)), [str(s) for s in x_labels], rotation=90 if len(x_labels) > 12 else 0)
    if y_labels is not None:
        ax.set_yticks(range(len(y_labels)), [str(s) for s in y_labels])
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    return image
