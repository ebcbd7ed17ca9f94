"""The checker itself: it must pass right backwards and catch wrong ones."""

import numpy as np
import pytest

from nptransformer import backend
from nptransformer.gradcheck import TOLERANCES, check_grad
from nptransformer.nn import Module, Parameter


def square_forward(x):
    return x * x, x


def square_backward(dy, x):
    return 2 * x * dy


def wrong_square_backward(dy, x):
    return 2.01 * x * dy


def mutating_backward(dy, x):
    dy *= 2 * x
    return dy


def relu_forward(x):
    return x * (x > 0), x > 0


def relu_backward(dy, mask):
    return dy * mask


class Scale(Module):
    """y = x * w, one parameter (C,)."""

    def __init__(self, c, wrong=False):
        super().__init__()
        self.weight = Parameter(backend.asarray(np.linspace(0.5, 1.5, c)))
        self.wrong = wrong

    def forward(self, x):
        self.save_for_backward(x)
        return x * self.weight.data

    def backward(self, dy):
        x = self.saved()
        self.weight.accumulate(backend.xp.sum(dy * x, axis=0) * (1.1 if self.wrong else 1.0))
        return dy * self.weight.data


@pytest.mark.parametrize("size", [(3, 4), (20, 30)])  # entrywise and directional modes
def test_right_backward_passes_and_wrong_one_fails(size, backend_name):
    x = np.random.default_rng(0).normal(size=size)
    good = check_grad((square_forward, square_backward), [x])
    assert good.passed and good.max_rel < 1e-8, good.table()
    assert good.rows[0].mode == ("entrywise" if x.size <= 128 else "directional")
    bad = check_grad((square_forward, wrong_square_backward), [x])
    assert not bad.passed
    with pytest.raises(AssertionError, match="FAIL"):
        bad.raise_if_failed()


def test_mutation_of_upstream_gradient_is_reported():
    x = np.random.default_rng(1).normal(size=(2, 3))
    report = check_grad((square_forward, mutating_backward), [x])
    assert any("upstream gradient" in m for m in report.mutations)
    assert not report.passed


def test_point_on_a_kink_is_nudged_not_reported():
    x = np.array([[-1.0, 0.0, 0.5], [0.0, 2.0, -0.3]])
    report = check_grad((relu_forward, relu_backward), [x])
    assert report.passed and report.passed_after_move, report.table()


def test_module_parameters_are_checked_and_restored(backend_name):
    x = np.random.default_rng(2).normal(size=(4, 3))
    m = Scale(3)
    before = backend.to_numpy(m.weight.data)
    report = check_grad(m, [x])
    assert [r.name for r in report.rows] == ["input 0", "weight"]
    assert report.passed, report.table()
    np.testing.assert_array_equal(backend.to_numpy(m.weight.data), before)
    assert m.weight.grad is None and not m._saved
    bad = check_grad(Scale(3, wrong=True), [x])
    assert [r.passed for r in bad.rows] == [True, False]


def test_float32_uses_its_own_tolerances():
    x = np.random.default_rng(3).normal(size=(3, 3)).astype(np.float32)
    report = check_grad((square_forward, square_backward), [x])
    assert report.dtype == "float32" and report.passed, report.table()
    assert TOLERANCES["float32"]["rtol"] > TOLERANCES["float64"]["rtol"]


def test_rejects_things_that_are_not_checkable():
    with pytest.raises(TypeError, match="fn must be"):
        check_grad(lambda x: x, [np.ones(2)])
