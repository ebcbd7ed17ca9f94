"""Draw one post-norm encoder layer as a computational graph: docs/figures/encoder_layer_graph.png.

    python examples/encoder_graph.py [output.png]

The figure shows the forward arrays (black) and what the backward does where the residual streams fork
(the gradients of the two branches add) and where they join (an addition hands its gradient to both
inputs unchanged). docs/worked-example.md computes every arrow of it with numbers. Needs matplotlib
(pip install 'nptransformer[examples]').
"""

from __future__ import annotations

import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "figures" / "encoder_layer_graph.png"

# (name, x, y, text): the ops and arrays of  r1 = x + SelfAttn(x), x1 = norm1(r1), r2 = x1 + FFN(x1), x2 = norm2(r2)
NODES = [
    ("x", 0.0, 0.0, "x\n(T, C)"),
    ("fork1", 1.2, 0.0, "fork"),
    ("attn", 2.7, -1.3, "self-attention\nq, k, v = x W_qᵀ + b_q, x W_kᵀ + b_k, x W_vᵀ + b_v\n"
                        "P = softmax(q kᵀ τ)\ny_att = P v W_oᵀ + b_o"),
    ("add1", 4.4, 0.0, "+"),
    ("norm1", 5.6, 0.0, "norm1"),
    ("fork2", 6.9, 0.0, "fork"),
    ("ffn", 8.4, -1.3, "feed-forward\nu = x1 W1ᵀ + b1\na = act(u)\ny_ff = a W2ᵀ + b2"),
    ("add2", 10.1, 0.0, "+"),
    ("norm2", 11.3, 0.0, "norm2"),
    ("out", 12.6, 0.0, "x2\n(T, C)"),
]
# (from, to, label above the arrow, forward branch drawn as an arc over the top?)
EDGES = [
    ("x", "fork1", "", False),
    ("fork1", "attn", "", False),
    ("attn", "add1", "y_att", False),
    ("fork1", "add1", "skip: x", True),
    ("add1", "norm1", "r1", False),
    ("norm1", "fork2", "x1", False),
    ("fork2", "ffn", "", False),
    ("ffn", "add2", "y_ff", False),
    ("fork2", "add2", "skip: x1", True),
    ("add2", "norm2", "r2", False),
    ("norm2", "out", "", False),
]
# (x, y, text) notes in the gradient colour: what the backward does at each fork and join
NOTES = [
    (1.2, 1.55, "backward at a fork: the gradients of\nthe two branches add\ndx = dr1 + dx_att"),
    (4.4, 1.55, "backward at +: dr1 goes\nunchanged to both inputs"),
    (6.9, 1.55, "backward at a fork: the gradients\nadd: dx1 = dr2 + dx1_ff"),
    (10.1, 1.55, "backward at +: dr2 goes\nunchanged to both inputs"),
    (2.7, -2.55, "inside: x feeds three projections, a fork too;\ndx_att = dq W_q + dk W_k + dv W_v"),
]
LABELS = [text for *_, text in NODES] + [label for *_, label, _ in EDGES if label] + [text for *_, text in NOTES]


def draw(path: str | Path = OUT) -> Path:
    """Draw the graph to ``path`` (PNG) and return the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed: the figure only goes to a file
        import matplotlib.pyplot as plt
        from matplotlib.patches import FancyArrowPatch
    except ImportError as exc:
        raise ImportError("the graph needs matplotlib: pip install 'nptransformer[examples]'") from exc

    grad = "#b03030"
    where = {name: (x, y) for name, x, y, _ in NODES}
    fig, ax = plt.subplots(figsize=(13, 4.6))
    for name, x, y, text in NODES:
        small = name.startswith(("fork", "add"))
        ax.text(x, y, text, ha="center", va="center", fontsize=10 if small else 9, zorder=3,
                bbox=dict(boxstyle="circle" if small else "round,pad=0.4",
                          fc="#ffffff" if small else "#eef3fb", ec="#333333"))
    boxes = {"attn", "ffn"}  # the big boxes: arrows meet their top edge, not their centre
    for a, b, label, arc in EDGES:
        (x0, y0), (x1, y1) = where[a], where[b]
        y0, y1 = y0 + 0.62 * (a in boxes), y1 + 0.62 * (b in boxes)
        style = "arc3,rad=-0.45" if arc else "arc3,rad=0"
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), connectionstyle=style, arrowstyle="-|>",
                                     mutation_scale=14, shrinkA=5 if a in boxes else 17,
                                     shrinkB=3 if b in boxes else 17, color="#333333", zorder=2))
        if label:
            lx, ly = (x0 + x1) / 2, (y0 + y1) / 2 + (0.95 if arc else 0.18)
            ax.text(lx, ly, label, ha="center", va="bottom", fontsize=9, style="italic")
    for x, y, text in NOTES:
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5, color=grad)
    ax.text(12.9, -2.55, "forward: black arrows, left to right\nbackward: right to left, red notes",
            ha="right", va="center", fontsize=8.5, color="#333333")
    ax.set_xlim(-0.6, 13.2)
    ax.set_ylim(-3.0, 2.2)
    ax.axis("off")
    ax.set_title("One post-norm encoder layer: where the residual streams fork and their gradients add", fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(draw(sys.argv[1] if len(sys.argv) > 1 else OUT))
