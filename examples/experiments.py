"""The Transformer's textbook claims, measured on this library's own models: one sub-command per claim.

Run from the repository root (NumPy CPU, one BLAS thread each):

    python examples/experiments.py sqrt-dk          # seconds: q.k variance, softmax saturation
    python examples/experiments.py permutation      # seconds: equivariance without positions
    python examples/experiments.py param-split      # seconds: attention / feed-forward / embeddings
    python examples/experiments.py norms            # seconds: layer norm vs batch norm
    python examples/experiments.py moe-cost         # seconds (+ --train: minutes): parameters and FLOPs
    python examples/experiments.py ablation         # minutes: positions, GELU/ReLU, no feed-forward
    python examples/experiments.py depth            # minutes: pre-LN vs post-LN, warm-up
    python examples/experiments.py beam             # minutes: greedy vs beam, length penalty, BLEU
    python examples/experiments.py scaling          # minutes: a power law in model size
    python examples/experiments.py all

Each writes docs/figures/exp_<name>.png and .json (the measured numbers) and
prints a markdown table; docs/experiments.md discusses them. ``--quick``
shrinks the trained ones to a smoke test.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import pathlib
import sys
import time
from typing import Any, Callable

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from nptransformer import backend  # noqa: E402
from nptransformer.apps.train_char import split_text, validation_loss  # noqa: E402
from nptransformer.backend import Generator  # noqa: E402
from nptransformer.bleu import corpus_bleu  # noqa: E402
from nptransformer.data import char_batch  # noqa: E402
from nptransformer.functional import sinusoidal_table, softmax_backward, softmax_forward  # noqa: E402
from nptransformer.generation import beam_search  # noqa: E402
from nptransformer.generation.seq2seq import greedy_decode  # noqa: E402
from nptransformer.models import GPT, Seq2SeqTransformer  # noqa: E402
from nptransformer.nn import init  # noqa: E402
from nptransformer.nn import (BatchNorm1d, CrossEntropyLoss, FeedForward, LayerNorm, MixtureOfExperts,  # noqa: E402
                              Module, TransformerEncoderLayer)
from nptransformer.optim import AdamW, WarmupCosine, param_groups_for_weight_decay  # noqa: E402
from nptransformer.training import Trainer, TrainingDiverged, blas_threads  # noqa: E402

FIGURES = ROOT / "docs" / "figures"
TEXT = ROOT / "examples" / "data" / "shakespeare.txt"
QUICK = False  # --quick: every trained experiment shrinks to a smoke test


def _save(name: str, results: Any, fig: Any) -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"exp_{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    fig.tight_layout()
    fig.savefig(FIGURES / f"exp_{name}.png", dpi=90)
    print(f"wrote docs/figures/exp_{name}.png and .json")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _table(header: list[str], rows: list[list[Any]]) -> None:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(fmt(v) for v in r) + " |")


# -- 1. sqrt(d_k) ------------------------------------------------------------------------------------------
def sqrt_dk(args: Any) -> None:
    """Var(q.k) grows as d_k; dividing by sqrt(d_k) keeps it 1 and the softmax's gradient alive."""
    rng = np.random.default_rng(0)
    dims, rows, T = [4, 16, 64, 256, 1024], [], 16
    for d in dims:
        q, k = rng.normal(size=(4000, d)), rng.normal(size=(4000, d))
        dots = np.sum(q * k, axis=1)
        entry = {"d_k": d, "var_unscaled": float(dots.var()), "var_scaled": float((dots / math.sqrt(d)).var())}
        keys = rng.normal(size=(500, T, d))
        for label, scale in (("unscaled", 1.0), ("scaled", 1 / math.sqrt(d))):
            logits = np.einsum("nd,ntd->nt", q[:500], keys) * scale  # one query against T keys
            p, ctx = softmax_forward(logits)
            dy = rng.normal(size=p.shape)
            entry[f"max_p_{label}"] = float(p.max(axis=1).mean())
            entry[f"grad_norm_{label}"] = float(np.linalg.norm(softmax_backward(dy, ctx), axis=1).mean())
        rows.append(entry)
    _table(["d_k", "Var q.k", "Var q.k/sqrt(d_k)", "max p (unscaled)", "max p (scaled)", "|grad| unscaled",
            "|grad| scaled"], [[e["d_k"], e["var_unscaled"], e["var_scaled"], e["max_p_unscaled"],
                                e["max_p_scaled"], e["grad_norm_unscaled"], e["grad_norm_scaled"]] for e in rows])
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.loglog(dims, [e["var_unscaled"] for e in rows], "o-", label="q.k")
    a.loglog(dims, [e["var_scaled"] for e in rows], "s-", label="q.k / sqrt(d_k)")
    a.set_xlabel("d_k"), a.set_ylabel("variance"), a.legend()
    b.loglog(dims, [e["grad_norm_unscaled"] for e in rows], "o-", label="unscaled")
    b.loglog(dims, [e["grad_norm_scaled"] for e in rows], "s-", label="scaled")
    b.set_xlabel("d_k"), b.set_ylabel(f"mean |softmax grad| (T={T})"), b.legend()
    _save("sqrt_dk", rows, fig)


# -- 2. permutation equivariance ---------------------------------------------------------------------------
def permutation(args: Any) -> None:
    """Without positions, permuting the tokens permutes the outputs; adding positions breaks that."""
    backend.manual_seed(0)
    rng = np.random.default_rng(0)
    T, C = 8, 32
    layer = TransformerEncoderLayer(C, 4, 64, dropout=0.0, dtype="float64").eval()
    vocab = rng.normal(size=(5, C))
    sentence = np.array([0, 1, 2, 0, 3, 4, 1, 2])  # "the king bites the dog ..." as ids
    perm = rng.permutation(T)
    tables = {"none": np.zeros((T, C)), "sinusoidal": backend.to_numpy(sinusoidal_table(T, C, dtype="float64")),
              "learned (random N(0, 0.02))": rng.normal(scale=0.02, size=(T, C)),
              "learned (random N(0, 1))": rng.normal(size=(T, C))}
    rows = []
    for name, pos in tables.items():
        x = vocab[sentence][None] + pos[None]
        xp_ = vocab[sentence[perm]][None] + pos[None]  # the same words, another order, positions by slot
        y, yp = layer(x)[0], layer(xp_)[0]
        err = float(np.max(np.abs(yp - y[perm])))
        rows.append({"positions": name, "max |f(Px) - P f(x)|": err, "max |f(x)|": float(np.max(np.abs(y)))})
    _table(list(rows[0]), [list(r.values()) for r in rows])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh([r["positions"] for r in rows], [max(r["max |f(Px) - P f(x)|"], 1e-17) for r in rows])
    ax.set_xscale("log"), ax.set_xlabel("max |f(Px) - P f(x)| (float64)")
    _save("permutation", rows, fig)


# -- 3. parameter split -------------------------------------------------------------------------------------
def _split(model: GPT) -> dict:
    parts = {"embeddings": 0, "attention": 0, "feed_forward": 0, "norms": 0}
    for name, p in model.named_parameters():
        if name.startswith(("wte", "wpe")):
            parts["embeddings"] += p.size
        elif "attn" in name:
            parts["attention"] += p.size
        elif "linear" in name:
            parts["feed_forward"] += p.size
        else:
            parts["norms"] += p.size
    return parts


def _closed_form(V: int, T: int, L: int, C: int) -> dict:
    return {"embeddings": V * C + T * C, "attention": L * (4 * C * C + 4 * C), "feed_forward": L * (8 * C * C + 5 * C),
            "norms": L * 4 * C + 2 * C}


def param_split(args: Any) -> None:
    """Counts by building each model's one- and two-block versions (a block's count = their difference)."""
    configs = [("char GPT (train-char default)", 65, 128, 4, 4, 128), ("GPT-2 small", 50257, 1024, 12, 12, 768),
               ("GPT-2 medium", 50257, 1024, 24, 16, 1024), ("GPT-2 large", 50257, 1024, 36, 20, 1280),
               ("GPT-2 XL", 50257, 1024, 48, 25, 1600)]
    rows = []
    for name, V, T, L, H, C in configs:
        one, two = (_split(GPT(V, T, n, H, C, dtype="float16")) for n in (1, 2))
        measured = {k: one[k] + (L - 1) * (two[k] - one[k]) for k in one}
        closed = _closed_form(V, T, L, C)
        total = sum(measured.values())
        rows.append({"model": name, **{f"{k}": measured[k] for k in measured}, "total": total,
                     "matches closed form": measured == closed,
                     "ff share of all": measured["feed_forward"] / total,
                     "ff share of blocks": measured["feed_forward"] / (measured["feed_forward"] + measured["attention"]
                                                                       + measured["norms"] - 2 * C)})
    _table(list(rows[0]), [list(r.values()) for r in rows])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    left = np.zeros(len(rows))
    for part in ("embeddings", "attention", "feed_forward", "norms"):
        share = np.array([r[part] / r["total"] for r in rows])
        ax.barh([r["model"] for r in rows], share, left=left, label=part)
        left += share
    ax.set_xlabel("share of parameters"), ax.legend(loc="lower right", fontsize=8)
    _save("param_split", rows, fig)


# -- 4. layer norm vs batch norm ----------------------------------------------------------------------------
def norms(args: Any) -> None:
    """How much one sequence's normalised output moves when its batch-mates or its padding change."""
    rng = np.random.default_rng(0)
    B, T, C = 4, 6, 8
    ln, bn = LayerNorm(C, dtype="float64"), BatchNorm1d(C, dtype="float64")
    for _ in range(50):  # running statistics from 50 training batches of the same distribution
        bn(rng.normal(loc=0.5, scale=2.0, size=(B, T, C)))
    bn.clear_saved()
    x = rng.normal(loc=0.5, scale=2.0, size=(B, T, C))
    changed = np.concatenate([x[:1], rng.normal(loc=3.0, scale=0.5, size=(B - 1, T, C))])
    rows = []
    for label, m, training in (("LayerNorm", ln, False), ("BatchNorm1d, training", bn, True),
                               ("BatchNorm1d, eval (running stats)", bn, False)):
        m.train(training)
        base = m(x)[0]
        entry = {"layer": label, "other sequences changed": float(np.max(np.abs(m(changed)[0] - base)))}
        for pad in (2, 6):
            padded = np.concatenate([x, np.zeros((B, pad, C))], axis=1)  # zero padding after every sequence
            entry[f"{pad} padding positions"] = float(np.max(np.abs(m(padded)[0, :T] - base)))
        m.clear_saved()
        rows.append(entry)
    _table(list(rows[0]), [list(r.values()) for r in rows])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3))
    keys = list(rows[0])[1:]
    for i, r in enumerate(rows):
        ax.bar(np.arange(len(keys)) + 0.27 * i, [max(r[k], 1e-17) for k in keys], 0.27, label=r["layer"])
    ax.set_xticks(np.arange(len(keys)) + 0.27, keys), ax.set_yscale("log")
    ax.set_ylabel("max |change| of sequence 0's output"), ax.legend(fontsize=7)
    _save("norms", rows, fig)


# -- trained GPTs on the character task ---------------------------------------------------------------------
_DATA: dict = {}


def _char_data() -> tuple:
    if not _DATA:
        tokenizer, train, val = split_text(TEXT.read_text())
        _DATA.update(tokenizer=tokenizer, train=train, val=val[:20000])  # the first 20k held-out characters
    return _DATA["tokenizer"], _DATA["train"], _DATA["val"]


class NoFeedForward(Module):
    """A feed-forward sublayer that outputs 0: the block is attention alone (norm2 is left, unused)."""

    def forward(self, x: Any) -> Any:
        return x * 0.0

    def backward(self, dy: Any) -> Any:
        return dy * 0.0


def train_char(*, d_model: int = 64, n_layer: int = 2, n_head: int = 4, block_size: int = 64, batch_size: int = 16,
               steps: int = 300, lr: float = 3e-3, warmup: int = 30, seed: int = 0, positional: str = "learned",
               feed_forward: Callable | None = None, norm_first: bool = True,
               max_grad_norm: float | None = 1.0, wte_std: float | None = None) -> dict:
    """Train a GPT on Shakespeare characters; returns its validation loss (nan when training diverged)."""
    tokenizer, train, val = _char_data()
    steps = 20 if QUICK else steps
    backend.manual_seed(seed)
    model = GPT(tokenizer.vocab_size, block_size, n_layer, n_head, d_model, positional=positional,
                feed_forward=feed_forward, generator=Generator(seed))
    for block in model.blocks:
        block.norm_first = norm_first
    if wte_std is not None:  # GPT-2 draws tokens from N(0, 0.02); a fixed position table may drown them
        init.normal_(model.wte.weight, 0.0, wte_std, generator=Generator(seed))
    optimizer = AdamW(param_groups_for_weight_decay(model, 0.1), lr=lr, betas=(0.9, 0.99))
    schedule = WarmupCosine(optimizer, warmup_steps=min(warmup, steps // 2), total_steps=steps, min_lr=lr / 10)
    trainer = Trainer(model, optimizer, CrossEntropyLoss(), lambda g: char_batch(train, block_size, batch_size, g),
                      schedule=schedule, max_grad_norm=max_grad_norm, generator=Generator(seed + 1), out=io.StringIO())
    start = time.perf_counter()
    try:
        trainer.fit(steps, log_every=steps)
        val_loss = validation_loss(model, val, block_size)
    except TrainingDiverged:
        val_loss = float("nan")
    return {"val_loss": val_loss, "seconds": time.perf_counter() - start, "model": model,
            "non_embedding_params": model.num_parameters(non_embedding=True)}


def _seeds(args: Any) -> list[int]:
    return list(range(1 if QUICK else args.seeds))


def ablation(args: Any) -> None:
    """The same GPT, seeds and budget; one design choice changed at a time."""
    variants = {
        "learned positions, GELU, FFN (baseline)": {},
        "sinusoidal positions": {"positional": "sinusoidal"},
        "sinusoidal positions, token table N(0, 1)": {"positional": "sinusoidal", "wte_std": 1.0},
        "rotary positions": {"positional": "rotary"},
        "ReLU instead of GELU": {"feed_forward": lambda d: FeedForward(d, 4 * d, activation="relu")},
        "no feed-forward sublayer": {"feed_forward": lambda d: NoFeedForward()},
    }
    rows = []
    for name, kw in variants.items():
        runs = [train_char(seed=s, **kw) for s in _seeds(args)]
        losses = [r["val_loss"] for r in runs]
        rows.append({"variant": name, "val loss mean": float(np.mean(losses)), "std over seeds": float(np.std(losses)),
                     "per seed": [round(v, 4) for v in losses], "non-embedding params": runs[0]["non_embedding_params"],
                     "seconds per run": float(np.mean([r["seconds"] for r in runs]))})
        print(rows[-1])
    _table(list(rows[0]), [list(r.values()) for r in rows])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r["variant"] for r in rows], [r["val loss mean"] for r in rows],
            xerr=[r["std over seeds"] for r in rows])
    ax.set_xlim(min(r["val loss mean"] for r in rows) - 0.2, max(r["val loss mean"] for r in rows) + 0.1)
    ax.set_xlabel(f"validation loss (nats/char), mean ± std over {len(_seeds(args))} seeds")
    _save("ablation", rows, fig)


def depth(args: Any) -> None:
    """Pre-LN vs post-LN at growing depth, with and without warm-up, no gradient clipping."""
    rows = []
    depths = [6, 12, 24] if QUICK else args.depths
    for L in depths:
        for norm_first in (True, False):
            for warmup in (0, 50):
                r = train_char(d_model=32, n_layer=L, n_head=4, block_size=32, steps=150, lr=args.depth_lr,
                               warmup=warmup, norm_first=norm_first, max_grad_norm=None)
                rows.append({"layers": L, "norm": "pre-LN" if norm_first else "post-LN", "warm-up steps": warmup,
                             "val loss": r["val_loss"], "seconds": r["seconds"]})
                print(rows[-1])
    uniform = math.log(_char_data()[0].vocab_size)
    freq = np.bincount(_char_data()[1]) / len(_char_data()[1])
    unigram = float(-np.sum(freq[freq > 0] * np.log(freq[freq > 0])))  # loss of the character frequencies alone
    for r in rows:  # "failed": diverged, or no better than knowing the character frequencies
        r["trained"] = bool(math.isfinite(r["val loss"]) and r["val loss"] < unigram - 0.1)
    print(f"unigram entropy of the training characters: {unigram:.3f} nats")
    _table(list(rows[0]), [list(r.values()) for r in rows])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for norm in ("pre-LN", "post-LN"):
        for warmup, style in ((0, "o-"), (50, "s--")):
            sel = [r for r in rows if r["norm"] == norm and r["warm-up steps"] == warmup]
            ax.plot([r["layers"] for r in sel], [min(r["val loss"], uniform) if math.isfinite(r["val loss"])
                                                 else uniform for r in sel], style,
                    label=f"{norm}, warm-up {warmup}")
    ax.axhline(uniform, color="gray", lw=0.8, label="log V (uniform guess)")
    ax.axhline(unigram, color="gray", lw=0.8, ls=":", label="unigram entropy")
    ax.set_xscale("log", base=2), ax.set_xlabel("layers"), ax.set_ylabel("validation loss"), ax.legend(fontsize=7)
    ax.set_title(f"peak lr {args.depth_lr:g}, 150 steps, no clipping", fontsize=9)
    _save("depth" if args.depth_lr == 3e-3 else f"depth_lr{args.depth_lr:g}", rows, fig)


# -- MoE ----------------------------------------------------------------------------------------------------
def _moe_factory(E: int, k: int) -> Callable:
    return lambda d: MixtureOfExperts(d, 4 * d, num_experts=E, top_k=k, aux_loss_weight=0.01)


def _gpt_costs(model: GPT) -> tuple[int, int, int]:
    """(parameters, active parameters per token, training FLOPs per token), idle experts subtracted."""
    idle = sum(m.num_parameters() - m.num_active_parameters() for m in model.modules()
               if isinstance(m, MixtureOfExperts))
    return model.num_parameters(), model.num_parameters() - idle, model.flops_per_token() - 6 * idle


def moe_cost(args: Any) -> None:
    """Parameters grow with the experts; FLOPs per token follow the k active ones."""
    rows = []
    for E in (1, 2, 4, 8, 16):
        for k in (1, 2):
            if k > E:
                continue
            model = GPT(65, 64, 2, 4, 64, feed_forward=_moe_factory(E, k))
            params, active, flops = _gpt_costs(model)
            rows.append({"experts": E, "top_k": k, "parameters": params, "active parameters": active,
                         "training FLOPs/token": flops})
    dense = GPT(65, 64, 2, 4, 64)
    rows.insert(0, {"experts": "dense FFN", "top_k": "-", "parameters": dense.num_parameters(),
                    "active parameters": dense.num_parameters(), "training FLOPs/token": dense.flops_per_token()})
    _table(list(rows[0]), [list(r.values()) for r in rows])
    trained = []
    if args.train:
        for label, ff in [("dense FFN", None)] + [(f"{E} experts, top-1", _moe_factory(E, 1)) for E in (2, 4, 8)]:
            runs = [train_char(seed=s, feed_forward=ff) for s in _seeds(args)]
            model = runs[0]["model"]
            loads = [m.tokens_per_expert for m in model.modules() if isinstance(m, MixtureOfExperts)]
            _, _, flops = _gpt_costs(model)
            losses = [r["val_loss"] for r in runs]
            trained.append({"model": label, "training FLOPs/token": flops, "parameters": model.num_parameters(),
                            "val loss mean": float(np.mean(losses)), "std": float(np.std(losses)),
                            "tokens per expert in the last forward (validation), block 0": loads[0] if loads else "-"})
            print(trained[-1])
        _table(list(trained[0]), [list(r.values()) for r in trained])
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if trained else 1, figsize=(10 if trained else 5, 3.5), squeeze=False)
    moe = [r for r in rows if r["top_k"] == 1]
    a = axes[0][0]
    a.plot([r["experts"] for r in moe], [r["parameters"] for r in moe], "o-", label="parameters")
    a.plot([r["experts"] for r in moe], [r["training FLOPs/token"] / 6 for r in moe], "s-",
           label="training FLOPs/token / 6")
    a.set_xscale("log", base=2), a.set_xlabel("experts (top-1)"), a.legend()
    if trained:
        b = axes[0][1]
        b.barh([r["model"] for r in trained], [r["val loss mean"] for r in trained], xerr=[r["std"] for r in trained])
        b.set_xlim(min(r["val loss mean"] for r in trained) - 0.1, max(r["val loss mean"] for r in trained) + 0.05)
        b.set_xlabel("validation loss at equal FLOPs/token and steps")
    _save("moe", {"costs": rows, "trained": trained}, fig)


# -- scaling law ---------------------------------------------------------------------------------------------
def scaling(args: Any) -> None:
    """Validation loss of GPTs of growing width at one token budget; L(N) = a N^-alpha fitted in log-log."""
    rows = []
    for d in ([16, 32] if QUICK else args.widths):
        runs = [train_char(d_model=d, n_head=max(2, d // 16), seed=s) for s in _seeds(args)]
        rows.append({"d_model": d, "non-embedding params": runs[0]["non_embedding_params"],
                     "val loss mean": float(np.mean([r["val_loss"] for r in runs])),
                     "std": float(np.std([r["val_loss"] for r in runs]))})
        print(rows[-1])
    n = np.log([r["non-embedding params"] for r in rows])
    y = np.log([r["val loss mean"] for r in rows])
    coef, cov = np.polyfit(n, y, 1, cov=True) if len(rows) > 3 else (np.polyfit(n, y, 1), np.full((2, 2), np.nan))
    alpha, alpha_se = float(-coef[0]), float(math.sqrt(cov[0, 0]))
    fit = {"alpha": alpha, "alpha_stderr": alpha_se, "a": float(math.exp(coef[1])),
           "tokens": 300 * 16 * 64}
    _table(list(rows[0]), [list(r.values()) for r in rows])
    print(f"L(N) = {fit['a']:.3g} N^-{alpha:.4f} (± {alpha_se:.4f}, one standard error of the slope)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    N = np.array([r["non-embedding params"] for r in rows])
    ax.errorbar(N, [r["val loss mean"] for r in rows], yerr=[r["std"] for r in rows], fmt="o", label="measured")
    ax.plot(N, fit["a"] * N ** -alpha, "-", label=f"fit: alpha = {alpha:.3f} ± {alpha_se:.3f}")
    ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss"), ax.legend()
    _save("scaling", {"runs": rows, "fit": fit}, fig)


# -- greedy vs beam on a synthetic translation task ----------------------------------------------------------
_EN_UNITS = "zero one two three four five six seven eight nine".split()
_EN_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_DE_UNITS = "null eins zwei drei vier fuenf sechs sieben acht neun".split()
_DE_TEENS = "zehn elf zwoelf dreizehn vierzehn fuenfzehn sechzehn siebzehn achtzehn neunzehn".split()
_DE_TENS = "_ _ zwanzig dreissig vierzig fuenfzig sechzig siebzig achtzig neunzig".split()


def english_words(n: int) -> list[str]:
    """1 <= n <= 999 in English word order: 'three hundred twenty one'."""
    words = [_EN_UNITS[n // 100], "hundred"] if n >= 100 else []
    r = n % 100
    if 10 <= r < 20:
        words.append(_EN_TEENS[r - 10])
    else:
        words += ([_EN_TENS[r // 10]] if r >= 20 else []) + ([_EN_UNITS[r % 10]] if r % 10 else [])
    return words


def german_words(n: int) -> list[str]:
    """1 <= n <= 999 by German rules: units before tens ('drei hundert ein und zwanzig'), 'ein' before 'und'."""
    words = ["ein" if n // 100 == 1 else _DE_UNITS[n // 100], "hundert"] if n >= 100 else []
    r = n % 100
    if 10 <= r < 20:
        words.append(_DE_TEENS[r - 10])
    elif r >= 20:
        words += (["ein" if r % 10 == 1 else _DE_UNITS[r % 10], "und"] if r % 10 else []) + [_DE_TENS[r // 10]]
    elif r:
        words.append(_DE_UNITS[r])
    return words


class NumberTranslation:
    """English number words -> German-rule number words, 1..999; ``held_out`` numbers never train."""

    PAD, BOS, EOS = 0, 1, 2

    def __init__(self, seed: int = 0, n_held_out: int = 200):
        numbers = np.random.default_rng(seed).permutation(np.arange(1, 1000))
        self.held_out, self.train = numbers[:n_held_out], numbers[n_held_out:]
        self.src_vocab = ["<pad>", "<bos>", "<eos>"] + sorted({w for n in range(1, 1000) for w in english_words(n)})
        self.tgt_vocab = ["<pad>", "<bos>", "<eos>"] + sorted({w for n in range(1, 1000) for w in german_words(n)})
        self.src_id = {w: i for i, w in enumerate(self.src_vocab)}
        self.tgt_id = {w: i for i, w in enumerate(self.tgt_vocab)}
        self.max_len = 7

    def encode(self, numbers: np.ndarray) -> tuple[tuple[Any, Any], Any]:
        B, L = len(numbers), self.max_len
        src, tgt_in, tgt_out = (np.full((B, L + 1), self.PAD, dtype=np.int64) for _ in range(3))
        for i, n in enumerate(numbers):
            s = [self.src_id[w] for w in english_words(int(n))] + [self.EOS]
            t = [self.tgt_id[w] for w in german_words(int(n))]
            src[i, :len(s)] = s
            tgt_in[i, :len(t) + 1] = [self.BOS] + t
            tgt_out[i, :len(t) + 1] = t + [self.EOS]
        return (src, tgt_in), tgt_out

    def batch(self, generator: Generator, batch_size: int) -> tuple[tuple[Any, Any], Any]:
        with backend.use("numpy"):
            picks = generator.integers(0, len(self.train), (batch_size,))
        return self.encode(self.train[picks])

    def words(self, ids: Any) -> list[str]:
        out = []
        for i in list(ids):
            if int(i) == self.EOS:
                break
            if int(i) not in (self.PAD, self.BOS):
                out.append(self.tgt_vocab[int(i)])
        return out


def beam(args: Any) -> None:
    """A small encoder-decoder, trained briefly, decoded greedily and by beam search with several alphas."""
    task = NumberTranslation()
    backend.manual_seed(0)
    model = Seq2SeqTransformer(len(task.src_vocab), len(task.tgt_vocab), d_model=32, nhead=4, num_encoder_layers=2,
                               num_decoder_layers=2, dim_feedforward=64, dropout=0.0, norm_first=True,
                               max_len=task.max_len + 2, pad_id=task.PAD, generator=Generator(0))
    budgets = [10, 20] if QUICK else args.beam_steps
    optimizer = AdamW(param_groups_for_weight_decay(model, 0.01), lr=2e-3, betas=(0.9, 0.98))
    schedule = WarmupCosine(optimizer, warmup_steps=max(1, budgets[-1] // 20), total_steps=budgets[-1], min_lr=2e-4)
    trainer = Trainer(model, optimizer, CrossEntropyLoss(ignore_index=task.PAD), lambda g: task.batch(g, 32),
                      schedule=schedule, generator=Generator(1), out=io.StringIO())
    (src, _), tgt_out = task.encode(task.held_out)
    refs = [task.words(row) for row in tgt_out]
    ref_len = float(np.mean([len(r) for r in refs]))
    rows, examples = [], []
    for steps in budgets:  # snapshots of one run: the decoders differ most while the model still errs
        trainer.fit(steps, log_every=steps)
        decodes = {"greedy": [task.words(row[1:]) for row in backend.to_numpy(
            greedy_decode(model, src, max_len=task.max_len + 1, bos_id=task.BOS, eos_id=task.EOS))]}
        for width, alpha in ((4, 0.0), (4, 0.6), (4, 1.0), (4, 2.0), (8, 0.6)):
            found = beam_search(model, src, beam_width=width, max_len=task.max_len + 1, length_penalty=alpha,
                                bos_id=task.BOS, eos_id=task.EOS)
            decodes[f"beam {width}, alpha {alpha}"] = [task.words(h[0].tokens[1:]) for h in found]
        for name, hyps in decodes.items():
            rows.append({"steps": steps, "decoder": name, "BLEU": 100 * corpus_bleu(hyps, refs),
                         "exact match": float(np.mean([h == r for h, r in zip(hyps, refs)])),
                         "mean length": float(np.mean([len(h) for h in hyps])), "reference length": ref_len})
        examples += [[steps, " ".join(english_words(int(n))), " ".join(decodes["greedy"][i]),
                      " ".join(decodes["beam 4, alpha 0.6"][i]), " ".join(refs[i])]
                     for i, n in enumerate(task.held_out[:3])]
    _table(list(rows[0]), [list(r.values()) for r in rows])
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(dict.fromkeys(r["decoder"] for r in rows))
    for i, name in enumerate(names):
        sel = [r for r in rows if r["decoder"] == name]
        a.plot([r["steps"] for r in sel], [r["BLEU"] for r in sel], "o-", label=name)
        b.plot([r["steps"] for r in sel], [r["mean length"] for r in sel], "o-", label=name)
    b.axhline(ref_len, color="gray", lw=0.8)
    a.set_xlabel("training steps"), a.set_ylabel("BLEU, 200 held-out numbers"), a.legend(fontsize=7)
    b.set_xlabel("training steps"), b.set_ylabel("mean output length (line: references)")
    _save("beam", {"rows": rows, "examples": examples}, fig)


COMMANDS = {"sqrt-dk": sqrt_dk, "permutation": permutation, "param-split": param_split, "norms": norms,
            "moe-cost": moe_cost, "ablation": ablation, "depth": depth, "beam": beam, "scaling": scaling}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=[*COMMANDS, "all"])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes for the trained experiments")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per trained configuration")
    parser.add_argument("--train", action="store_true", help="moe-cost: also train dense vs MoE GPTs")
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 12, 24, 48])
    parser.add_argument("--depth-lr", type=float, default=3e-3)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 24, 32, 48, 64, 96])
    parser.add_argument("--beam-steps", type=int, nargs="+", default=[50, 100, 200, 400],
                        help="beam: the training steps at which the decoders are compared")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (the machine is shared)")
    args = parser.parse_args(argv)
    global QUICK
    QUICK = args.quick
    with blas_threads(args.threads or None):
        for name, run in COMMANDS.items():
            if args.command in (name, "all"):
                start = time.perf_counter()
                print(f"== {name}")
                run(args)
                print(f"{name}: {time.perf_counter() - start:.0f}s wall (a shared 2-core machine: noisy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
