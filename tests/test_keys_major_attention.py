"""The keys-major attention kernel beyond the registry sweep (tests/test_kernels.py checks values, gradients and
finite differences on small drawn cases):

- at the bench's size (16 x 4 heads, T = 128, float32), forward and all three gradients against PyTorch's
  scaled_dot_product_attention, serially and with the pool (parts pipelined);
- NaN and inf reach the same outputs as the reference (a NaN score makes its query's row NaN, a masked inf
  score is masked), in this kernel and in the blocked one;
- a BERT-shaped key-padding mask (bool and float) against PyTorch, a fully padded sequence included;
- with dropout, the reference's output and gradients from the same generator state (parts of one head);
- what the dispatch sends it: attention of more than one query without a bias, masked or not, with dropout or
  not; a bias, a decoding step's single query and long causal attention go elsewhere;
- .probs is the reference's matrix, and the output merges its heads into (B, T, E) without a copy.
"""

import numpy as np
import pytest

from nptransformer import parallel
from nptransformer.functional import scaled_dot_product_attention_backward, scaled_dot_product_attention_forward
from nptransformer.kernels import KERNELS, choose

KEYS_MAJOR = KERNELS["scaled_dot_product_attention.keys_major"]


def _qkv(shape, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(4)]


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("is_causal", [True, False])
def test_bench_sized_attention_matches_torch(threads, is_causal):
    torch = pytest.importorskip("torch", reason="PyTorch is the independent reference here")
    q, k, v, dout = _qkv((16, 4, 128, 64))
    kernel = KEYS_MAJOR.configured(min_elements=1) if threads > 1 else KEYS_MAJOR
    out, ctx = kernel.forward(q, k, v, is_causal=is_causal)
    dq, dk, dv, dbias = kernel.backward(dout, ctx)
    tq, tk, tv = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (q, k, v))
    want = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=is_causal)
    want.backward(torch.tensor(dout, dtype=torch.float64))
    np.testing.assert_allclose(out, want.detach().numpy(), rtol=1e-4, atol=2e-6)
    for got, ref in ((dq, tq.grad), (dk, tk.grad), (dv, tv.grad)):
        scale = float(np.abs(ref.numpy()).max())
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5 * scale)
    assert dbias is None and out.dtype == np.float32 and dq.dtype == np.float32


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_key_padding_masked_attention_matches_torch(threads, kind):
    # BERT-shaped: 12 heads of 32, 40 positions, each sequence padded after its own length; one sequence all
    # padding (its queries attend to nothing: zeros, as the reference gives, where torch gives NaN).
    torch = pytest.importorskip("torch", reason="PyTorch is the independent reference here")
    q, k, v, dout = _qkv((6, 12, 40, 32))
    lengths = np.array([40, 33, 17, 1, 25, 0])
    padded = np.arange(40)[None, :] >= lengths[:, None]  # (B, Tk), True = padding
    mask = padded[:, None, None, :] if kind == "bool" else np.where(padded, -np.inf, 0.0).astype(np.float32)[
        :, None, None, :]
    kernel = KEYS_MAJOR.configured(min_elements=1, part_elements=40 * 40 * 12) if threads > 1 else KEYS_MAJOR
    assert kernel.applies(q, k, v, attn_mask=mask)
    out, ctx = kernel.forward(q, k, v, attn_mask=mask)
    dq, dk, dv, _ = kernel.backward(dout, ctx)
    live = lengths > 0
    tq, tk, tv = (torch.tensor(a[live], dtype=torch.float64, requires_grad=True) for a in (q, k, v))
    want = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.tensor(~padded[live, None,
                                                                                                        None, :]))
    want.backward(torch.tensor(dout[live], dtype=torch.float64))
    np.testing.assert_allclose(out[live], want.detach().numpy(), rtol=1e-4, atol=2e-6)
    for got, ref in ((dq, tq.grad), (dk, tk.grad), (dv, tv.grad)):
        np.testing.assert_allclose(got[live], ref.numpy(), rtol=1e-4, atol=1e-5 * float(np.abs(ref.numpy()).max()))
    assert not out[~live].any() and not dq[~live].any() and not dk[~live].any() and not dv[~live].any()


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_dropout_drops_what_the_reference_drops(threads):
    from nptransformer import backend

    q, k, v, dout = _qkv((3, 4, 48, 16), dtype=np.float64)
    kernel = KEYS_MAJOR.configured(min_elements=1, part_elements=48 * 48) if threads > 1 else KEYS_MAJOR
    mask = np.random.default_rng(7).random((3, 1, 1, 48)) < 0.2
    results = []
    for run in (kernel.forward, scaled_dot_product_attention_forward):
        out, ctx = run(q, k, v, attn_mask=mask, dropout_p=0.3, is_causal=True, generator=backend.Generator(11))
        backward = kernel.backward if run == kernel.forward else scaled_dot_product_attention_backward
        results.append((out, *backward(dout, ctx)[:3]))
    undropped, _ = kernel.forward(q, k, v, attn_mask=mask, is_causal=True)
    assert not np.allclose(results[0][0], undropped)  # the dropout did drop something
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf on purpose
@pytest.mark.parametrize("name", [KEYS_MAJOR.name, "scaled_dot_product_attention.blocked"])
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_nan_and_inf_reach_the_outputs_as_in_the_reference(threads, name):
    kernel = KERNELS[name].configured(**KERNELS[name].test_settings)
    q, k, v, dout = _qkv((2, 3, 6, 4), dtype=np.float64)
    q[0, 1, 2, 0] = np.nan  # one query's scores all NaN
    k[1, 0, 4, 1] = np.inf  # one key's scores +-inf: a NaN row for the queries that see it, masked for the others
    for is_causal in (True, False):
        out, ctx = kernel.forward(q, k, v, is_causal=is_causal)
        want, want_ctx = scaled_dot_product_attention_forward(q, k, v, is_causal=is_causal)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-14)  # NaN where the reference has NaN
        assert np.isnan(out[0, 1, 2]).all()
        assert np.isfinite(out[1, 0, :4]).all() == is_causal  # key 4 hidden from queries 0-3 by the mask
        for got, ref in zip(kernel.backward(dout, ctx)[:3], scaled_dot_product_attention_backward(dout, want_ctx)):
            # The blocked kernel never multiplies a query block by keys it cannot see, so the queries before the
            # inf key get finite gradients where the reference's dS k has 0 * inf = NaN; compare the rest.
            seen = np.isfinite(ref) | np.isnan(got) if name != KEYS_MAJOR.name and is_causal else slice(None)
            np.testing.assert_allclose(got[seen], ref[seen], rtol=1e-12, atol=1e-14)


def test_dispatch_takes_attention_of_several_queries_without_a_bias():
    q = np.zeros((16, 4, 128, 64), dtype=np.float32)
    name = lambda *args, **kwargs: choose("scaled_dot_product_attention", *args, **kwargs).name  # noqa: E731
    assert name(q, q, q, is_causal=True) == KEYS_MAJOR.name
    assert name(q, q, q) == KEYS_MAJOR.name
    assert name(q, q, q, attn_mask=np.zeros((128, 128), dtype=bool)) == KEYS_MAJOR.name
    assert name(q, q, q, attn_mask=np.zeros((16, 1, 1, 128), dtype=np.float32)) == KEYS_MAJOR.name
    assert name(q, q, q, dropout_p=0.1, is_causal=True) == KEYS_MAJOR.name
    assert name(q, q, q, bias=np.zeros((4, 128, 128), np.float32)) == "scaled_dot_product_attention.blocked"
    one = np.zeros((16, 4, 1, 64), dtype=np.float32)
    assert name(one, q, q) != KEYS_MAJOR.name  # a decoding step: one query against the cache
    long = np.zeros((1, 2, KEYS_MAJOR.settings["causal_below"], 16), dtype=np.float32)
    assert name(long, long, long, is_causal=True) == "scaled_dot_product_attention.blocked"
    assert name(long, long, long) == KEYS_MAJOR.name  # not causal: no keys to skip


def test_probs_and_head_merge():
    q, k, v, _ = _qkv((3, 2, 5, 4), dtype=np.float64)
    with parallel.num_threads(2):
        out, ctx = KEYS_MAJOR.configured(part_elements=1, min_elements=1).forward(q, k, v, is_causal=True)
    _, want_ctx = scaled_dot_product_attention_forward(q, k, v, is_causal=True)
    np.testing.assert_allclose(ctx.probs, want_ctx.probs, rtol=1e-12, atol=1e-15)
    # q, k, v split from one (B, T, 3, H, D) projection, as MultiheadAttention splits them:
    qkv = np.random.default_rng(1).standard_normal((3, 5, 3, 2, 4))
    q3, k3, v3 = np.transpose(qkv, (2, 0, 3, 1, 4))
    out, _ = KEYS_MAJOR.forward(q3, k3, v3)
    merged = np.transpose(out, (0, 2, 1, 3))
    assert merged.flags.c_contiguous  # (B, T, H, D) in memory: reshaping to (B, T, H * D) copies nothing


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("is_causal", [True, False])
def test_multihead_self_attention_through_the_kernel_equals_the_reference(threads, is_causal):
    # Big enough for the dispatch to pick the kernel (2 x 4 heads x 64 x 64 scores), in parts of one head with
    # two threads; the backward's gradients come back merged into the projection's layout, so MultiheadAttention
    # skips its copy: values must not change.
    from nptransformer import backend
    from nptransformer.kernels import configured, reference_only
    from nptransformer.nn import MultiheadAttention

    x = np.random.default_rng(3).standard_normal((2, 64, 32))
    dy = np.random.default_rng(4).standard_normal((2, 64, 32))
    small_parts = {KEYS_MAJOR.name: {"part_elements": 64 * 64, "min_elements": 1}}
    results = []
    for context in (configured(small_parts), reference_only()):
        mha = MultiheadAttention(32, 4, dtype="float64", generator=backend.Generator(0))
        with parallel.num_threads(threads), context:
            q = np.zeros((2, 4, 64, 8))
            ran = choose("scaled_dot_product_attention", q, q, q, is_causal=is_causal).name
            y = mha.self_attention(x, is_causal=is_causal)
            dx = mha.backward(dy)
        results.append((y, dx, mha.in_proj_weight.grad, mha.in_proj_bias.grad, mha.out_proj.weight.grad))
        assert ran == (KEYS_MAJOR.name if len(results) == 1 else "scaled_dot_product_attention")
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_gradients_of_overlapping_views_are_not_merged_into_one_array():
    # q, k and v cut from one array so that their sizes add up to it but q and k overlap: their gradients
    # must still be separate arrays (a merged buffer would add dq and dk into the shared column).
    base = np.random.default_rng(5).standard_normal((3, 6, 6))
    q, k, v = base[..., 0:2], base[..., 1:3], base[..., 3:5]
    dout = np.random.default_rng(6).standard_normal((3, 6, 2))
    kernel = KEYS_MAJOR.configured(reference_below=0)
    out, ctx = kernel.forward(q, k, v, is_causal=True)
    want, want_ctx = scaled_dot_product_attention_forward(q, k, v, is_causal=True)
    for got, ref in zip(kernel.backward(dout, ctx)[:3], scaled_dot_product_attention_backward(dout, want_ctx)):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-13)
