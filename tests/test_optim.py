"""Optimizers, clipping and schedules against torch.optim (float64) and against closed forms."""

import math

import numpy as np
import pytest

from nptransformer import backend
from nptransformer.nn import Module, Parameter
from nptransformer.optim import (
    SGD,
    Adam,
    AdamW,
    NoamSchedule,
    WarmupCosine,
    clip_grad_norm,
    param_groups_for_weight_decay,
)

SHAPES = [(4, 3), (5,), (2, 3, 2), (1,)]
STEPS = 25


def _stream(rng, steps=STEPS):
    """Initial values and a gradient stream; the last parameter has no gradient every third step."""
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = [
        [None if (i == len(SHAPES) - 1 and t % 3 == 2) else rng.standard_normal(s) for i, s in enumerate(SHAPES)]
        for t in range(steps)
    ]
    return init, grads


def _two_groups(params, **second):
    return [{"params": params[:2]}, {"params": params[2:], **second}]


# (our class, torch class name, how params become groups, constructor kwargs)
CASES = {
    "sgd": (SGD, "SGD", list, dict(lr=0.1)),
    "sgd_momentum": (SGD, "SGD", list, dict(lr=0.1, momentum=0.9)),
    "sgd_dampening": (SGD, "SGD", list, dict(lr=0.1, momentum=0.9, dampening=0.3)),
    "sgd_nesterov": (SGD, "SGD", list, dict(lr=0.1, momentum=0.9, nesterov=True)),
    "sgd_weight_decay": (SGD, "SGD", list, dict(lr=0.1, momentum=0.5, weight_decay=0.1)),
    "adam": (Adam, "Adam", list, dict(lr=0.01)),
    "adam_betas_eps": (Adam, "Adam", list, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-3)),
    "adam_weight_decay": (Adam, "Adam", list, dict(lr=0.01, weight_decay=0.1)),
    "adamw": (AdamW, "AdamW", list, dict(lr=0.01)),
    "adamw_weight_decay": (AdamW, "AdamW", list, dict(lr=0.05, weight_decay=0.3)),
    "sgd_groups": (SGD, "SGD", lambda ps: _two_groups(ps, lr=0.03, momentum=0.0), dict(lr=0.1, momentum=0.9)),
    "adam_groups": (Adam, "Adam", lambda ps: _two_groups(ps, betas=(0.5, 0.9)), dict(lr=0.01, weight_decay=0.05)),
    "adamw_groups": (
        AdamW, "AdamW", lambda ps: _two_groups(ps, weight_decay=0.0, lr=0.02), dict(lr=0.01, weight_decay=0.1)
    ),
}


def _run_ours(cls, grouping, kwargs, init, grads):
    params = [Parameter(backend.asarray(a.copy(), dtype="float64")) for a in init]
    opt = cls(grouping(params), **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else backend.asarray(g, dtype="float64")
        opt.step()
    return [backend.to_numpy(p.data) for p in params]


def _run_torch(torch, name, grouping, kwargs, init, grads):
    params = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in init]
    opt = getattr(torch.optim, name)(grouping(params), **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torch(case, backend_name, rng):
    torch = pytest.importorskip("torch")
    cls, name, grouping, kwargs = CASES[case]
    init, grads = _stream(rng)
    ours = _run_ours(cls, grouping, kwargs, init, grads)
    ref = _run_torch(torch, name, grouping, kwargs, init, grads)
    for a, b, x0 in zip(ours, ref, init):
        assert np.max(np.abs(a - b)) <= 1e-12
        assert np.max(np.abs(a - x0)) > 1e-3  # the parameters did move


def test_strict_backend_equals_numpy(rng):
    init, grads = _stream(rng)
    cls, _, grouping, kwargs = CASES["adamw_groups"]
    on_numpy = _run_ours(cls, grouping, kwargs, init, grads)
    with backend.use("strict"):
        on_strict = _run_ours(cls, grouping, kwargs, init, grads)
    for a, b in zip(on_numpy, on_strict):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls, kwargs", [(SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1)), (AdamW, dict(lr=0.1))])
def test_update_in_place_keeps_dtype_and_grad(cls, kwargs, backend_name, rng):
    p = Parameter(backend.asarray(rng.standard_normal((3, 2)), dtype="float32"))
    g_host = rng.standard_normal((3, 2))
    p.grad = backend.asarray(g_host, dtype="float32")
    data, grad = p.data, p.grad
    opt = cls([p], **kwargs)
    opt.step()
    opt.step()
    assert p.data is data  # updated in place, not reassigned
    assert backend.backend_of(p.data) == backend_name
    assert backend.dtype_name(p.data.dtype) == "float32"
    for value in opt.state[p].values():
        if not isinstance(value, int):
            assert backend.dtype_name(value.dtype) == "float32" and backend.backend_of(value) == backend_name
    np.testing.assert_array_equal(backend.to_numpy(grad), g_host.astype(np.float32))  # grad not modified


def test_zero_grad_and_skipping():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(3))
    opt = Adam([a, b], lr=0.1)
    a.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(b.data, np.ones(3))
    assert b not in opt.state and opt.state[a]["step"] == 1
    opt.zero_grad()
    assert a.grad is None and b.grad is None


# -- state_dict ----------------------------------------------------------------

@pytest.mark.parametrize("cls, kwargs", [
    (SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (Adam, dict(lr=0.01, weight_decay=0.1)),
    (AdamW, dict(lr=0.01, weight_decay=0.1)),
])
def test_state_dict_round_trip(cls, kwargs, backend_name, rng):
    init, grads = _stream(rng, steps=20)

    def feed(params, step_grads):
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else backend.asarray(g, dtype="float64")

    straight = [Parameter(backend.asarray(a.copy(), dtype="float64")) for a in init]
    opt = cls(_two_groups(straight, lr=0.05), **kwargs)
    sched = WarmupCosine(opt, warmup_steps=3, total_steps=20, min_lr=1e-3)
    for step_grads in grads:
        feed(straight, step_grads)
        opt.step()
        sched.step()

    resumed = [Parameter(backend.asarray(a.copy(), dtype="float64")) for a in init]
    opt = cls(_two_groups(resumed, lr=0.05), **kwargs)
    sched = WarmupCosine(opt, warmup_steps=3, total_steps=20, min_lr=1e-3)
    for step_grads in grads[:10]:
        feed(resumed, step_grads)
        opt.step()
        sched.step()
    saved, saved_sched = opt.state_dict(), sched.state_dict()
    # What a checkpoint file holds: host arrays and plain numbers.
    saved["state"] = {i: {k: v if isinstance(v, int) else backend.to_numpy(v) for k, v in s.items()}
                      for i, s in saved["state"].items()}

    fresh = cls(_two_groups(resumed, lr=0.7), **{**kwargs, "lr": 0.3})  # other hyperparameters: must be overwritten
    fresh_sched = WarmupCosine(fresh, warmup_steps=3, total_steps=20, min_lr=1e-3)
    fresh.load_state_dict(saved)
    fresh_sched.load_state_dict(saved_sched)
    for step_grads in grads[10:]:
        feed(resumed, step_grads)
        fresh.step()
        fresh_sched.step()

    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(backend.to_numpy(a.data), backend.to_numpy(b.data))
    for value in fresh.state[resumed[0]].values():
        if not isinstance(value, int):
            assert backend.backend_of(value) == backend_name


def test_state_dict_is_a_snapshot():
    p = Parameter(np.zeros(2))
    opt = Adam([p], lr=0.1)
    p.grad = np.ones(2)
    opt.step()
    saved = opt.state_dict()
    opt.step()
    assert saved["state"][0]["step"] == 1
    np.testing.assert_allclose(saved["state"][0]["exp_avg"], 0.1 * np.ones(2), rtol=1e-15)
    assert saved["param_groups"][0]["params"] == [0]


def test_load_state_dict_mismatch():
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(3))
    opt = Adam([a, b])
    a.grad, b.grad = np.ones(2), np.ones(3)
    opt.step()
    with pytest.raises(ValueError, match="2 parameters"):
        Adam([a]).load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="1 parameter groups"):
        Adam([{"params": [a]}, {"params": [b]}]).load_state_dict(opt.state_dict())
    swapped = opt.state_dict()
    swapped["state"][0]["exp_avg"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        Adam([a, b]).load_state_dict(swapped)
    with pytest.raises(ValueError, match="keys"):
        SGD([a, b]).load_state_dict(opt.state_dict())


# -- bad input ------------------------------------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda p: SGD(p, lr=0.0), ValueError, "lr must be > 0"),
    (lambda p: Adam(p, lr=-1e-3), ValueError, "lr must be > 0"),
    (lambda p: Adam(p, lr="0.1"), TypeError, "lr must be a real number"),
    (lambda p: Adam(p, betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    (lambda p: AdamW(p, betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (lambda p: Adam(p, betas=(0.9,)), ValueError, "betas must be a pair"),
    (lambda p: Adam(p, eps=-1e-8), ValueError, "eps must be > 0"),
    (lambda p: AdamW(p, weight_decay=-0.01), ValueError, "weight_decay must be >= 0"),
    (lambda p: SGD(p, momentum=-0.9), ValueError, "momentum must be >= 0"),
    (lambda p: SGD(p, nesterov=True), ValueError, "nesterov=True needs momentum > 0"),
    (lambda p: SGD(p, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "dampening = 0"),
    (lambda p: SGD([]), ValueError, "params is empty"),
    (lambda p: SGD(p + p[:1]), ValueError, "appears twice"),
    (lambda p: SGD([{"params": p}, {"params": p[:1]}]), ValueError, r"param_groups\[1\].*appears twice"),
    (lambda p: SGD(p + [np.zeros(2)]), TypeError, r"params\[2\] must be a Parameter"),
    (lambda p: SGD(p[0]), TypeError, "wrap it in a list"),
    (lambda p: SGD([{"params": p, "lr": 0.1}, {"params": []}]), ValueError, r"param_groups\[1\]\['params'\] is empty"),
    (lambda p: Adam([{"params": p[:1]}, {"params": p[1:], "lr": -1.0}]), ValueError,
     r"param_groups\[1\]\.lr must be > 0"),
    (lambda p: Adam([{"params": p, "momentum": 0.9}]), ValueError,
     r"param_groups\[0\]\.momentum is not a hyperparameter"),
    (lambda p: Adam([{"lr": 0.1}]), ValueError, "no 'params' key"),
])
def test_bad_input(make, error, match):
    params = [Parameter(np.zeros(2)), Parameter(np.zeros(3))]
    with pytest.raises(error, match=match):
        make(params)


def test_bad_grad_shape():
    p = Parameter(np.zeros(3))
    p.grad = np.zeros((1,))
    with pytest.raises(ValueError, match=r"grad has shape \(1,\)"):
        SGD([p], lr=0.1).step()
    p.grad = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match="dtype float32"):
        SGD([p], lr=0.1).step()


# -- clip_grad_norm -----------------------------------------------------------------

@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, backend_name, rng):
    torch = pytest.importorskip("torch")
    grads = [rng.standard_normal(s) for s in SHAPES]
    params = [Parameter(backend.asarray(np.zeros(s), dtype="float64")) for s in SHAPES + [(2,)]]
    for p, g in zip(params, grads):
        p.grad = backend.asarray(g, dtype="float64")  # the last parameter keeps grad None
    tparams = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES + [(2,)]]
    for p, g in zip(tparams, grads):
        p.grad = torch.tensor(g)
    total = clip_grad_norm(params, max_norm, norm_type)
    ref = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type)
    assert backend.backend_of(total) == backend_name and total.shape == ()
    assert abs(float(backend.to_numpy(total)) - ref.item()) <= 1e-12
    for p, tp in zip(params[:-1], tparams):
        assert np.max(np.abs(backend.to_numpy(p.grad) - tp.grad.numpy())) <= 1e-12
    assert params[-1].grad is None


def test_clip_grad_norm_closed_form():
    p, q = Parameter(np.zeros(2)), Parameter(np.zeros(1))
    p.grad, q.grad = np.array([3.0, 0.0]), np.array([4.0])
    assert clip_grad_norm([p, q], max_norm=2.5) == 5.0
    np.testing.assert_allclose(p.grad, [3.0 * 2.5 / (5 + 1e-6), 0.0], rtol=1e-15)
    np.testing.assert_allclose(q.grad, [4.0 * 2.5 / (5 + 1e-6)], rtol=1e-15)
    assert clip_grad_norm([Parameter(np.zeros(2))], 1.0) == 0.0  # no gradients at all


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_norm=-1.0), "max_norm must be >= 0"),
    (dict(max_norm=1.0, norm_type=0.0), "norm_type must be > 0"),
    (dict(max_norm="1"), "max_norm must be a real number"),
])
def test_clip_grad_norm_bad_input(kwargs, match):
    p = Parameter(np.zeros(2))
    p.grad = np.ones(2)
    with pytest.raises((ValueError, TypeError), match=match):
        clip_grad_norm([p], **kwargs)
    with pytest.raises(TypeError, match=r"params\[0\] must be a Parameter"):
        clip_grad_norm([np.ones(2)], 1.0)


# -- schedules ---------------------------------------------------------------------

def _noam(s, d_model, warmup, factor):
    return factor * d_model**-0.5 * min(s**-0.5, s * warmup**-1.5)


def _warmup_cosine(s, base, warmup, total, min_lr):
    if s <= warmup:
        return base * s / warmup
    q = min((s - warmup) / (total - warmup), 1.0)
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * q))


def _lrs(optimizer, schedule, n):
    """The lr of each group at optimizer steps 1..n."""
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    return np.array(out)


def test_noam_closed_form_and_torch():
    torch = pytest.importorskip("torch")
    d_model, warmup, factor, n = 512, 10, 2.0, 40
    opt = Adam([Parameter(np.zeros(1))])
    ours = _lrs(opt, NoamSchedule(opt, d_model, warmup, factor), n)[:, 0]
    closed = np.array([_noam(s, d_model, warmup, factor) for s in range(1, n + 1)])
    np.testing.assert_allclose(ours, closed, rtol=1e-15)
    assert np.argmax(ours) == warmup - 1 and ours[warmup - 1] == pytest.approx(factor * (d_model * warmup) ** -0.5)
    topt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambda e: _noam(e + 1, d_model, warmup, factor))
    ref = []
    for _ in range(n):
        ref.append(topt.param_groups[0]["lr"])
        topt.step()
        tsched.step()
    np.testing.assert_allclose(ours, ref, rtol=1e-15)


def test_warmup_cosine_closed_form_and_torch():
    torch = pytest.importorskip("torch")
    bases, warmup, total, min_lr, n = [0.1, 0.02], 5, 25, 1e-3, 40
    params = [Parameter(np.zeros(1)), Parameter(np.zeros(1))]
    opt = SGD([{"params": [params[0]], "lr": bases[0]}, {"params": [params[1]], "lr": bases[1]}])
    ours = _lrs(opt, WarmupCosine(opt, warmup, total, min_lr), n)
    closed = np.array([[_warmup_cosine(s, b, warmup, total, min_lr) for b in bases] for s in range(1, n + 1)])
    np.testing.assert_allclose(ours, closed, rtol=1e-14)
    np.testing.assert_allclose(ours[warmup - 1], bases, rtol=1e-15)  # peak at the end of warmup
    np.testing.assert_allclose(ours[total - 1:], min_lr, rtol=1e-15)  # floor from total_steps on
    mid = warmup + (total - warmup) // 2
    np.testing.assert_allclose(ours[mid - 1], [(b + min_lr) / 2 for b in bases], rtol=1e-14)
    tparams = [torch.zeros(1, requires_grad=True) for _ in bases]
    topt = torch.optim.SGD([{"params": [tp], "lr": b} for tp, b in zip(tparams, bases)])
    lambdas = [lambda e, b=b: _warmup_cosine(e + 1, b, warmup, total, min_lr) / b for b in bases]
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambdas)
    ref = []
    for _ in range(n):
        ref.append([g["lr"] for g in topt.param_groups])
        topt.step()
        tsched.step()
    np.testing.assert_allclose(ours, ref, rtol=1e-14)


def test_adamw_with_schedule_matches_torch(rng):
    torch = pytest.importorskip("torch")
    init, grads = _stream(rng)
    lam = lambda s: _warmup_cosine(s, 0.05, 5, 20, 0.0) / 0.05  # noqa: E731
    params = [Parameter(a.copy()) for a in init]
    opt = AdamW(params, lr=0.05, weight_decay=0.1)
    sched = WarmupCosine(opt, warmup_steps=5, total_steps=20)
    tparams = [torch.tensor(a, requires_grad=True) for a in init]
    topt = torch.optim.AdamW(tparams, lr=0.05, weight_decay=0.1)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambda e: lam(e + 1))
    for step_grads in grads:
        for p, tp, g in zip(params, tparams, step_grads):
            p.grad = None if g is None else g.copy()
            tp.grad = None if g is None else torch.tensor(g)
        opt.step(); sched.step(); topt.step(); tsched.step()  # noqa: E702
    for p, tp in zip(params, tparams):
        assert np.max(np.abs(p.data - tp.detach().numpy())) <= 1e-12


@pytest.mark.parametrize("make, error, match", [
    (lambda o: NoamSchedule(o, d_model=0, warmup_steps=10), ValueError, "d_model"),
    (lambda o: NoamSchedule(o, d_model=64, warmup_steps=0), ValueError, "warmup_steps"),
    (lambda o: NoamSchedule(o, d_model=64, warmup_steps=4, factor=-1.0), ValueError, "factor"),
    (lambda o: WarmupCosine(o, warmup_steps=-1, total_steps=10), ValueError, "warmup_steps"),
    (lambda o: WarmupCosine(o, warmup_steps=10, total_steps=10), ValueError, "total_steps must exceed"),
    (lambda o: WarmupCosine(o, warmup_steps=1, total_steps=10, min_lr=1.0), ValueError, "min_lr"),
    (lambda o: WarmupCosine("adam", warmup_steps=1, total_steps=10), TypeError, "optimizer"),
])
def test_schedule_bad_input(make, error, match):
    opt = SGD([Parameter(np.zeros(1))], lr=0.1)
    with pytest.raises(error, match=match):
        make(opt)


# -- parameter groups for weight decay -----------------------------------------------

class _Linear(Module):
    def __init__(self):
        super().__init__()
        self.weight = Parameter(np.ones((3, 2)))
        self.bias = Parameter(np.ones(3))


class _Norm(Module):
    def __init__(self):
        super().__init__()
        self.weight = Parameter(np.ones(3))


class TokenEmbedding(Module):
    def __init__(self):
        super().__init__()
        self.weight = Parameter(np.ones((10, 3)))


class _Toy(Module):
    def __init__(self):
        super().__init__()
        self.wte = TokenEmbedding()
        self.fc = _Linear()
        self.ln = _Norm()
        self.head = _Linear()
        self.head.weight = self.wte.weight  # tied, as in GPT


def test_param_groups_for_weight_decay():
    model = _Toy()
    decay, no_decay = param_groups_for_weight_decay(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(model.fc.weight)]
    expected = [model.wte.weight, model.fc.bias, model.ln.weight, model.head.bias]
    assert sorted(map(id, no_decay["params"])) == sorted(map(id, expected))
    opt = AdamW([decay, no_decay], lr=0.1)
    for p in model.parameters():
        p.grad = np.zeros(p.shape)
    opt.step()  # zero gradients: only decoupled decay moves weights
    np.testing.assert_allclose(model.fc.weight.data, 1 - 0.1 * 0.1, rtol=1e-15)
    np.testing.assert_array_equal(model.wte.weight.data, 1.0)
    only_bias = Module()
    only_bias.bias = Parameter(np.ones(2))
    assert len(param_groups_for_weight_decay(only_bias, 0.1)) == 1  # an empty group is left out
