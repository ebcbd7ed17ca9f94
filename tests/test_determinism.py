"""Two identical training runs give bit-identical weights, at 1, 2, 3 and 4 threads.

Every kernel runs with its test settings, so these small arrays are split
over all the threads (GEMMs along every side, weight gradients along the
inner axis, row blocks, attention by batch): a partial sum added in the
order the threads finish would make the runs differ.
"""

import numpy as np
import pytest

from nptransformer import GPT, backend, nn, optim, parallel
from nptransformer.kernels import configured, small_settings

pytestmark = pytest.mark.usefixtures("needs_the_pool")


def _train(threads: int, steps: int = 4, dtype: str = "float32") -> dict:
    with parallel.num_threads(threads), configured(small_settings()):
        model = GPT(vocab_size=13, block_size=9, n_layer=2, n_head=2, d_model=16, dropout=0.1, dtype=dtype,
                    generator=backend.Generator(0))
        backend.manual_seed(1)
        criterion = nn.CrossEntropyLoss()
        opt = optim.AdamW(model.parameters(), lr=1e-2)
        idx = np.random.default_rng(2).integers(0, 13, size=(6, 9))
        for _ in range(steps):
            loss = criterion(model(idx[:, :-1]), idx[:, 1:])
            model.backward(criterion.backward())
            optim.clip_grad_norm(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
        return {name: backend.to_numpy(p.data).copy() for name, p in model.named_parameters()} | {
            "loss": np.asarray(backend.to_numpy(loss))}


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_two_identical_runs_give_bit_identical_weights(threads):
    first, second = _train(threads), _train(threads)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=f"{name} at {threads} threads")


def test_every_thread_count_trains_the_same_model_to_rounding():
    # Different thread counts add partial sums in different groupings: equal to rounding (float64 here,
    # since Adam's normalisation magnifies float32 rounding in near-zero gradients).
    serial = _train(1, dtype="float64")
    for threads in (2, 3):
        split = _train(threads, dtype="float64")
        for name in serial:
            np.testing.assert_allclose(split[name], serial[name], rtol=1e-9, atol=1e-12, err_msg=name)
