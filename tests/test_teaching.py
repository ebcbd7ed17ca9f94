"""The teaching material runs: every exercise's solution passes check_grad (NumPy and strict), every stub
fails it, the LSTM cell of the exercises matches torch's, and the computational-graph figure is drawn by
code in the repository."""

import importlib
import re
from pathlib import Path

import numpy as np
import pytest

from nptransformer.gradcheck import check_grad

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "docs" / "exercises"
NAMES = ["silu", "rms_norm", "softmax", "attention", "lstm_cell"]


@pytest.fixture
def exercises(monkeypatch):
    monkeypatch.syspath_prepend(str(EXERCISES))
    return lambda name: importlib.import_module(name)


def _pair(module, name):
    return getattr(module, f"{name}_forward"), getattr(module, f"{name}_backward")


@pytest.mark.parametrize("name", NAMES)
def test_the_solution_passes_on_every_case_and_backend(exercises, name):
    check = exercises("exercise_check")
    stub, solution = exercises(f"exercise_{name}"), exercises(f"solution_{name}")
    forward, backward = solution.__dict__[f"{name}_forward"], solution.__dict__[f"{name}_backward"]
    assert forward is getattr(stub, f"{name}_forward")  # the solution answers the stub's own forward
    reports = check.check(forward, backward, stub.cases, name, backend_names=check.backends())
    assert reports and all(r.passed for r in reports), "\n\n".join(r.table() for r in reports if not r.passed)


@pytest.mark.parametrize("name", NAMES)
def test_the_stub_fails_every_case(exercises, name):
    check = exercises("exercise_check")
    stub = exercises(f"exercise_{name}")
    reports = check.check(*_pair(stub, name), stub.cases, name, backend_names=["numpy"])
    assert reports and not any(r.passed for r in reports)
    assert all("worst at" in r.table() for r in reports)  # the learner is told where to look


def test_the_silu_cases_catch_a_formula_that_only_works_at_beta_1(exercises):
    stub = exercises("exercise_silu")

    def no_inner_beta(dy, ctx):
        x, s, beta = ctx
        return dy * (s + x * s * (1 - s))

    results = [check_grad((stub.silu_forward, no_inner_beta), list(a), k).passed for a, k in stub.cases(
        np.random.default_rng(0))]
    assert results[0] and not all(results)


def test_the_exercise_lstm_cell_is_torchs(exercises):
    torch = pytest.importorskip("torch", reason="PyTorch is the independent reference for the LSTM cell")
    stub = exercises("exercise_lstm_cell")
    x, h, c, W, U, b = stub.cases(np.random.default_rng(3))[0][0]
    cell = torch.nn.LSTMCell(x.shape[1], h.shape[1], dtype=torch.float64)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.from_numpy(W))
        cell.weight_hh.copy_(torch.from_numpy(U))
        cell.bias_ih.copy_(torch.from_numpy(b))
        cell.bias_hh.zero_()
        h_t, c_t = cell(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
    state, _ = stub.lstm_cell_forward(x, h, c, W, U, b)
    np.testing.assert_allclose(state, np.concatenate([h_t.numpy(), c_t.numpy()], axis=1), rtol=1e-12, atol=1e-14)


def test_a_numpy_float_scalar_input_is_checked_as_0d():
    report = check_grad((lambda x: (x * x, x), lambda dy, x: 2 * x * dy), [np.float64(1.5)])
    assert [r.name for r in report.rows] == ["input 0"] and report.passed


def test_the_encoder_graph_is_drawn(tmp_path, load_example):
    pytest.importorskip("matplotlib", reason="the figure is drawn with matplotlib")
    graph = load_example("encoder_graph")
    out = graph.draw(tmp_path / "graph.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = graph.LABELS
    assert any("fork" in text and "add" in text for text in labels)  # the point of the figure
    assert (ROOT / "docs" / "figures" / "encoder_layer_graph.png").is_file()


def _code_and_ticks(page: Path) -> tuple[str, str]:
    """(the page's code blocks, its code blocks and inline code together)."""
    text = page.read_text(encoding="utf-8")
    blocks = "\n".join(re.findall(r"```[^\n]*\n(.*?)```", text, re.S))
    return blocks, blocks + "\n" + "\n".join(re.findall(r"`([^`\n]+)`", text))


PATH_SUFFIXES = ("skip", "ff", "cross", "att", "layer")
NOT_GRADIENTS = {"def", "decoder", "dropout", "dtype", "d_model", "dim_feedforward", "down"}
IDENT = re.compile(r"(?<![\w.])([A-Za-z][\w]*\u0303?)(?![\w(.])")  # P̃ is P and a combining tilde


@pytest.mark.parametrize("page", ["backprop-walkthrough.md", "worked-example.md"])
def test_every_gradient_is_named_after_a_forward_array(page):
    """dX means dL/dX, so X must be an array the page defines (or dX a part of one, named by its path)."""
    blocks, everything = _code_and_ticks(ROOT / "docs" / page)
    names = {n.rstrip("ᵀ") for n in IDENT.findall(everything)}
    grads = {n.rstrip("ᵀ") for n in IDENT.findall(blocks) if n.startswith("d") and len(n) > 1} - NOT_GRADIENTS
    orphans = []
    for g in sorted(grads):
        base = g[1:]
        stem, _, suffix = base.rpartition("_")
        if base not in names and not (suffix in PATH_SUFFIXES and stem in names):
            orphans.append(g)
    assert not orphans, f"{page}: gradients of arrays the forward never defines: {orphans}"


def test_the_notation_page_gives_each_symbol_one_meaning():
    rows = re.findall(r"^\| (`[^|]+`) \|", (ROOT / "docs" / "notation.md").read_text(encoding="utf-8"), re.M)
    symbols = [s.strip("` ") for row in rows for s in row.split(",")]
    assert len(symbols) > 30
    assert len(symbols) == len(set(symbols)), sorted(s for s in symbols if symbols.count(s) > 1)
