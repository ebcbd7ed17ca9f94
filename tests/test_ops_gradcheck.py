"""Every registered op's backward against central differences, with hypothesis-chosen inputs,
under the numpy and strict backends; and the registry covers every public op."""

import inspect

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nptransformer import functional, testing
from nptransformer.functional import OPS
from nptransformer.gradcheck import check_grad


@pytest.mark.parametrize("name", sorted(OPS))
@given(data=st.data())
def test_op_backward_matches_finite_differences(name, backend_name, data):
    spec = OPS[name]
    case = data.draw(spec.cases(testing), label="case")
    report = check_grad((spec.forward, spec.backward), case.args, case.kwargs, wrt=spec.differentiable)
    report.raise_if_failed()
    # Relative 1e-6, or 1e-9 absolute where the gradient is about zero (a drawn case whose loss is flat in an
    # input, e.g. a student equal to its teacher: relative error of finite-difference noise against 0 is 1).
    assert all(r.max_rel < 1e-6 or r.max_abs < 1e-9 for r in report.rows), report.table()


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_example_passes_in_float64(name, backend_name):
    spec = OPS[name]
    case = spec.example(np.random.default_rng(0))
    report = check_grad((spec.forward, spec.backward), case.args, case.kwargs, wrt=spec.differentiable)
    report.raise_if_failed()
    assert report.max_rel < 1e-6, report.table()


def test_registry_covers_every_public_forward():
    forwards = {n for n, f in vars(functional).items() if n.endswith("_forward") and inspect.isfunction(f)}
    registered = {spec.forward.__name__ for spec in OPS.values()}
    assert forwards, "functional exports no ops"
    assert forwards <= registered, f"not registered: {sorted(forwards - registered)}"
    for spec in OPS.values():
        assert "docs/" in (spec.backward.__doc__ or ""), (
            f"{spec.name}: backward docstring must state its formula and link its derivation in docs/"
        )
