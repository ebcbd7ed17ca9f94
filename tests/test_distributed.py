"""Data, tensor and pipeline parallelism at 2 and 4 ranks equal the single-process run (float64, 1e-12).

Each case launches ``mpiexec -n N python tests/distributed_worker.py MODE OUT`` and compares every
rank's losses, first-step gradients and final weights with the same steps run here in one process.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nptransformer import GPT, backend
from nptransformer.apps.gradcheck import check_target
from nptransformer.registry import MODULE_CHECKS
from nptransformer.distributed import Communicator, DataParallel, PipelineParallel, TensorParallel
from nptransformer.functional import copy_to_group_backward, copy_to_group_forward, reduce_from_group_forward
from nptransformer.nn import CrossEntropyLoss
from nptransformer.training import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import distributed_worker as worker  # noqa: E402


def _mpiexec():
    pytest.importorskip("mpi4py", reason="the MPI tests need the mpi extra: pip install 'nptransformer[mpi]'")
    exe = shutil.which("mpiexec")
    if exe is None:
        pytest.skip("mpiexec not found (pip install mpich)")
    return exe


def _launch(n, mode, out, *extra):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([_mpiexec(), "-n", str(n), sys.executable, os.path.join(HERE, "distributed_worker.py"),
                           mode, str(out), *extra], capture_output=True, text=True, timeout=240, env=env)


def _reference(steps=worker.STEPS, model_name="gpt"):
    model, batch = worker.build(model_name, 0)
    criterion = CrossEntropyLoss()
    inputs, targets = batch(backend.Generator(7))
    criterion(model(*inputs), targets)
    model.backward(criterion.backward())
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    trainer = Trainer(model, worker.optimizer(model_name, model.parameters()), criterion, batch,
                      generator=backend.Generator(1), max_grad_norm=0.5, out=open(os.devnull, "w"))
    losses = [h["loss"] for h in trainer.fit(steps, log_every=1)]
    return np.asarray(losses), grads, {n: p.data for n, p in model.named_parameters()}


def _slice(full, spec, rank, size):
    axis, blocks = (int(v) for v in spec)
    parts = np.split(full, blocks, axis=axis)
    return np.concatenate([np.split(p, size, axis=axis)[rank] for p in parts], axis=axis)


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("mode, model_name", [("data", "gpt"), ("zero", "gpt"), ("tensor", "gpt"),
                                              ("pipeline", "gpt"), ("tensor", "seq2seq")])
def test_parallel_equals_single_process(mode, model_name, n, tmp_path):
    result = _launch(n, mode, tmp_path, "--model", model_name)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("step 3/3") == 1  # the progress line comes from rank 0 only
    losses, grads, weights = _reference(model_name=model_name)
    seen = set()
    for r in range(n):
        got = np.load(tmp_path / f"rank{r}.npz")
        np.testing.assert_allclose(got["loss"], losses, rtol=0, atol=1e-12)
        for kind, ref in (("g", grads), ("w", weights)):
            for key in got.files:
                if not key.startswith(kind + "/"):
                    continue
                name = key[2:]
                full = ref[name]
                if "spec/" + name in got.files:
                    full = _slice(full, got["spec/" + name], r, n)
                np.testing.assert_allclose(got[key], full, rtol=0, atol=1e-12, err_msg=f"{mode} rank {r} {key}")
                seen.add(name)
    assert seen >= set(weights)  # every parameter was compared on some rank
    if mode == "zero":  # Adam's two moments of every parameter, split: about 1/N of them on each rank
        full = 2 * sum(w.nbytes for w in weights.values())
        shares = [int(np.load(tmp_path / f"rank{r}.npz")["state_bytes"][0]) for r in range(n)]
        biggest = 2 * max(w.nbytes for w in weights.values())
        assert sum(shares) == full and max(shares) <= full / n + biggest


@pytest.mark.parametrize("save, resume", [(("tensor", 2), ("pipeline", 4)), (("pipeline", 2), ("tensor", 4)),
                                          (("data", 2), ("tensor", 1)), (("zero", 4), ("zero", 2))])
def test_checkpoint_resumes_at_any_world_size(save, resume, tmp_path):
    ckpt = tmp_path / "run.npz"
    first = _launch(save[1], save[0], tmp_path, "--steps", "2", "--checkpoint", str(ckpt))
    assert first.returncode == 0, first.stderr[-3000:]
    second = _launch(resume[1], resume[0], tmp_path, "--steps", "3", "--checkpoint", str(ckpt), "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and second.stdout.count("step 3/3") == 1
    _, _, weights = _reference(3)
    for r in range(resume[1]):
        got = np.load(tmp_path / f"rank{r}.npz")
        for key in (k for k in got.files if k.startswith("w/")):
            name = key[2:]
            full = weights[name]
            if "spec/" + name in got.files:
                full = _slice(full, got["spec/" + name], r, resume[1])
            np.testing.assert_allclose(got[key], full, rtol=0, atol=1e-12, err_msg=f"rank {r} {key}")


@pytest.mark.parametrize("mode", ["data", "tensor", "pipeline"])
def test_runs_with_dropout_are_bit_identical(mode, tmp_path):
    # The dropout streams come from (seed, rank, step) and every reduction adds in a fixed order.
    runs = []
    for i in range(2):
        out = tmp_path / str(i)
        out.mkdir()
        result = _launch(2, mode, out, "--dropout", "0.2")
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append([dict(np.load(out / f"rank{r}.npz")) for r in range(2)])
    for first, second in zip(*runs):
        assert first.keys() == second.keys()
        for key in first:
            assert np.array_equal(first[key], second[key]), key
    _, _, weights = _reference()  # without dropout: the dropped entries must have changed the run
    ln_f = next(rank["w/ln_f.weight"] for rank in runs[0] if "w/ln_f.weight" in rank)  # the last stage's
    assert not np.allclose(ln_f, weights["ln_f.weight"])


def test_dying_rank_stops_every_rank(tmp_path):
    result = _launch(2, "data", tmp_path, "--fail")
    assert result.returncode != 0
    assert "rank 1 fails on purpose" in result.stderr


@pytest.mark.parametrize("mode", ["data", "pipeline"])
def test_hung_rank_times_out_instead_of_hanging(mode, tmp_path):
    result = _launch(2, mode, tmp_path, "--hang", "--timeout", "2")  # rank 1 sleeps 600 s; _launch waits 240 s
    assert result.returncode != 0
    assert "CommTimeout: rank 0: no answer from rank 1" in result.stderr


@pytest.mark.parametrize("cls, kwargs", [(TensorParallel, {}), (PipelineParallel, {"micro_batches": 2})])
def test_world_size_must_divide(cls, kwargs):
    comm = Communicator.single()
    comm.size = 3  # only the check runs: it comes before any communication
    model = GPT(11, 8, 2, 2, 8)
    with pytest.raises(ValueError, match="world size 3 must divide"):
        cls(model, comm, **kwargs)


def test_batch_must_split_evenly():
    comm = Communicator.single()
    comm.size = 3
    model = GPT(11, 8, 2, 2, 8)
    dp = DataParallel.__new__(DataParallel)
    dp.comm = comm
    with pytest.raises(ValueError, match="batch size of inputs"):
        dp.shard(np.zeros((4, 8)), "inputs")
    del model


@pytest.mark.parametrize("name", ["tensor_parallel.FeedForward", "tensor_parallel.self_attention",
                                  "tensor_parallel.cross_attention", "pipeline.GPTStage"])
def test_split_layers_pass_their_gradient_checks(name, backend_name):
    # With one process the split layers hold everything: their backward must match finite differences.
    report = check_target("module", MODULE_CHECKS[name])
    report.raise_if_failed()
    assert report.max_rel < 1e-6, report.table()


def test_single_process_group_is_the_identity():
    x = np.arange(6.0).reshape(2, 3)
    y, ctx = copy_to_group_forward(x)
    assert y is x and copy_to_group_backward(x, ctx) is x
    assert reduce_from_group_forward(x)[0] is x
    with pytest.raises(TypeError, match="group must be None or have an allreduce"):
        copy_to_group_forward(x, group=object())


def _train_char(n, tmp_path, *args):
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question\n" * 40)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [_mpiexec(), "-n", str(n), sys.executable, "-m", "nptransformer", "train-char", "--text", str(text),
           "--steps", "4", "--eval-every", "2", "--d-model", "8", "--layers", "2", "--heads", "2", "--block-size", "8",
           "--batch-size", "4", "--sample-chars", "5", "--plot", "", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)


@pytest.mark.parametrize("mode", [["data"], ["data", "--zero"], ["tensor"], ["pipeline"]])
def test_train_char_command_line(mode, tmp_path):
    result = _train_char(2, tmp_path, "--parallel", *mode, "--micro-batches", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("step 4/4 | loss") == 1  # the progress line, printed by rank 0 alone
    assert result.stdout.count("best validation loss") == 1


def test_train_char_refuses_a_world_size_that_does_not_divide_the_heads(tmp_path):
    result = _train_char(4, tmp_path, "--parallel", "tensor")
    assert result.returncode != 0
    assert "world size 4 must divide the number of heads (2)" in result.stderr
