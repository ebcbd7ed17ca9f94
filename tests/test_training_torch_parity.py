"""Five steps of full training (GPT, cross-entropy, clipping, AdamW) against the same steps in PyTorch, float64."""

import io

import numpy as np
import pytest

from nptransformer import GPT
from nptransformer.backend import Generator
from nptransformer.nn import CrossEntropyLoss
from nptransformer.optim import AdamW, param_groups_for_weight_decay
from nptransformer.training import Trainer

V, T, L, H, C, B = 13, 8, 2, 2, 16, 4
STEPS, LR, MAX_NORM = 5, 3e-2, 0.5  # a large lr and a tight clip, so that every piece matters


def _torch_gpt(torch):
    """wte + wpe -> pre-LN encoder layers with a causal mask -> LayerNorm -> head tied to wte."""
    F = torch.nn.functional

    class TorchGPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Embedding(V, C, dtype=torch.float64)
            self.wpe = torch.nn.Embedding(T, C, dtype=torch.float64)
            self.blocks = torch.nn.ModuleList([
                torch.nn.TransformerEncoderLayer(C, H, 4 * C, dropout=0.0, batch_first=True, norm_first=True,
                                                 activation=lambda x: F.gelu(x, approximate="tanh"),
                                                 dtype=torch.float64)
                for _ in range(L)
            ])
            self.ln_f = torch.nn.LayerNorm(C, dtype=torch.float64)

        def forward(self, idx):
            t = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(t))
            causal = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)  # True = may not attend
            for block in self.blocks:
                x = block(x, src_mask=causal)
            return self.ln_f(x) @ self.wte.weight.T

    return TorchGPT()


def test_five_training_steps_match_pytorch_in_float64(threads):
    torch = pytest.importorskip("torch", reason="the training parity test needs torch")
    ours = GPT(V, T, L, H, C, dtype="float64", generator=Generator(0))
    ref = _torch_gpt(torch)
    ref.load_state_dict({k: torch.tensor(np.array(v)) for k, v in ours.state_dict().items()})

    groups = param_groups_for_weight_decay(ours, 0.1)
    name_of = {id(p): n for n, p in ours.named_parameters()}
    ref_params = dict(ref.named_parameters())
    ref_groups = [{"params": [ref_params[name_of[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
                  for g in groups]
    assert sum(len(g["params"]) for g in ref_groups) == len(ref_params)  # the tied head is wte in both
    ref_opt = torch.optim.AdamW(ref_groups, lr=LR, betas=(0.9, 0.95), eps=1e-8)

    batches = [np.random.default_rng(s).integers(0, V, size=(B, T + 1)) for s in range(STEPS)]
    batch_iter = iter(batches)

    def batch_fn(generator):
        w = next(batch_iter)
        return (w[:, :-1],), w[:, 1:]

    trainer = Trainer(ours, AdamW(groups, lr=LR, betas=(0.9, 0.95), eps=1e-8), CrossEntropyLoss(), batch_fn,
                      max_grad_norm=MAX_NORM, out=io.StringIO())
    trainer.fit(STEPS, log_every=1)
    our_losses = [h["loss"] for h in trainer.history]

    ref_losses, norms = [], []
    for w in batches:
        x, y = torch.tensor(w[:, :-1]), torch.tensor(w[:, 1:])
        loss = torch.nn.functional.cross_entropy(ref(x).reshape(-1, V), y.reshape(-1))
        ref_opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), MAX_NORM)))
        ref_opt.step()
        ref_losses.append(loss.item())

    assert min(norms) > MAX_NORM  # clipping was active at every step
    np.testing.assert_allclose(our_losses, ref_losses, rtol=1e-10)
    for name, value in ours.state_dict().items():
        want = ref.state_dict()[name].numpy()
        err = np.max(np.abs(value - want)) / np.max(np.abs(want))
        assert err < 1e-10, f"{name}: relative error {err:.2e}"
