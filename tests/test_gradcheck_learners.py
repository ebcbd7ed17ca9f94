"""What the gradient check tells a learner: 0-d inputs on retry, the worst entry, honest retry notes, the CLI's
--only and --module."""

import sys

import numpy as np
import pytest

from nptransformer import registry
from nptransformer.__main__ import main
from nptransformer.gradcheck import check_grad


def relu_pair():
    return (lambda x: (x * (x > 0), x > 0)), (lambda dy, mask: dy * mask)


def scaled_square_pair(factor):
    def backward(dy, ctx):
        x, s = ctx
        return factor * s * x * dy, np.sum(x * x * dy)

    return (lambda x, s: (s * x * x, (x, s))), backward


def test_a_0d_input_on_a_kink_passes_once_moved():
    # relu at exactly 0 fails the first try; the retry must move the 0-d input as an array (a NumPy scalar
    # would be copied by the in-place nudge and give a numeric gradient of 0)
    report = check_grad(relu_pair(), [np.array(0.0)])
    assert report.passed and report.passed_after_move, report.table()
    assert "probably on a kink" in report.table()


def test_a_correct_0d_gradient_stays_ok_when_another_row_fails():
    x, s = np.random.default_rng(0).normal(size=(2, 3)), np.array(1.3)
    report = check_grad(scaled_square_pair(3.0), [x, s])  # dx wrong (3 s x instead of 2 s x), ds right
    assert [r.passed for r in report.rows] == [False, True], report.table()
    assert report.rows[1].max_abs < 1e-8
    assert check_grad(scaled_square_pair(3.0), [x, s], kink_retries=0).rows[1].passed


def test_the_worst_entry_is_named_with_both_values():
    x = np.zeros((2, 3))
    x[1, 2] = 2.0

    def backward(dy, ctx):
        g = 2 * ctx * dy
        g[1, 2] += 1.0  # a wrong entry, exactly one
        return g

    report = check_grad((lambda a: (a * a, a), backward), [x])
    row = report.rows[0]
    assert not row.passed and row.worst == (1, 2)
    assert row.analytic - row.numeric == pytest.approx(1.0, abs=1e-6)
    assert "worst at index (1, 2)" in report.table()
    # the values are those of the inputs as given, not of a moved copy
    assert report.retries == 2 and not report.passed_after_move
    assert "not a kink" in report.table()


def test_directional_rows_name_the_direction():
    x = np.random.default_rng(1).normal(size=(20, 10))
    report = check_grad((lambda a: (a * a, a), lambda dy, a: 3 * a * dy), [x])
    assert report.rows[0].mode == "directional" and report.rows[0].worst[0] == "direction"
    assert "worst at direction" in report.table()


def test_an_ordinary_pass_carries_no_retry_note():
    report = check_grad(relu_pair(), [np.array([[1.0, -2.0]])])
    assert report.passed and report.retries == 0 and "note" not in report.table()


def test_only_matching_nothing_is_an_error(capsys):
    assert main(["gradcheck", "--only", "no_such_op_anywhere", "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert "no_such_op_anywhere" in err and "softmax" in err


@pytest.fixture
def learner_module(tmp_path, monkeypatch):
    """A learner's my_ops.py registering one right op and one written with plain np.* calls; the registry is
    restored afterwards so other tests see only the library's entries."""
    (tmp_path / "my_ops_for_test.py").write_text(
        "import numpy as np\n"
        "from nptransformer.backend import get_array_module\n"
        "from nptransformer.registry import Case, register_op\n"
        "def cube_forward(x):\n"
        "    return x * x * x, x\n"
        "def cube_backward(dy, x):\n"
        "    return 3 * x * x * dy\n"
        "def np_exp_forward(x):\n"
        "    y = np.exp(x)\n"
        "    return y, y\n"
        "def np_exp_backward(dy, y):\n"
        "    return dy * y\n"
        "example = lambda rng: Case((rng.normal(size=(2, 3)),))\n"
        "register_op('learner_cube', cube_forward, cube_backward, example=example, cases=lambda t: None)\n"
        "register_op('learner_np_exp', np_exp_forward, np_exp_backward, example=example, cases=lambda t: None)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(registry.OPS)
    yield "my_ops_for_test"
    for name in set(registry.OPS) - before:
        del registry.OPS[name]
    sys.modules.pop("my_ops_for_test", None)


def test_module_adds_a_learners_ops_to_the_table(learner_module, capsys):
    assert main(["gradcheck", "--module", learner_module, "--only", "learner_cube", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "learner_cube" in out and "all passed" in out


def test_a_plain_numpy_op_under_strict_fails_with_the_hint(learner_module, capsys):
    pytest.importorskip("array_api_strict", reason="the strict backend")
    code = main(["gradcheck", "--module", learner_module, "--only", "learner_np_exp",
                 "--backend", "numpy", "--backend", "strict"])
    out = capsys.readouterr().out
    assert code == 1
    rows = [line.split() for line in out.splitlines() if line.startswith("learner_np_exp  op ")]
    assert [(r[2], r[-1]) for r in rows] == [("numpy", "ok"), ("strict", "FAIL")]
    assert "get_array_module" in out and "1 FAILED" in out


def test_module_by_path_and_missing_module(learner_module, capsys):
    assert main(["gradcheck", "--module", f"{learner_module}.py", "--only", "learner_cube", "--backend", "numpy"]) == 0
    assert main(["gradcheck", "--module", "no_such_module_xyz", "--backend", "numpy"]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err
    assert main(["gradcheck", "--module", "missing.py", "--backend", "numpy"]) == 2
