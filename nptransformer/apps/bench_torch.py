"""The PyTorch twin of :class:`~nptransformer.models.GPT` that ``bench --compare-torch`` races against.

Same architecture, same parameter names (so ``load_state_dict`` moves the
weights over unchanged) and the same training step, written the way a
PyTorch user would: eager mode, ``F.scaled_dot_product_attention``,
``F.cross_entropy``, ``torch.optim.AdamW``. torch is imported by the
functions here, never at module import, so nptransformer keeps numpy as its
only runtime dependency.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def torch_gpt(vocab_size: int, block_size: int, n_layer: int, n_head: int, d_model: int, dropout: float = 0.0,
              tie_weights: bool = True, state_dict: dict | None = None) -> Any:
    """A float32 ``torch.nn.Module`` with GPT's architecture and parameter names.

    ``state_dict``: arrays (any backend) from ``GPT.state_dict()`` to copy in;
    None keeps torch's own initialisation (enough to measure memory).
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    from .. import backend

    C, H, p = d_model, n_head, dropout

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.in_proj_weight = nn.Parameter(torch.empty(3 * C, C))
            self.in_proj_bias = nn.Parameter(torch.empty(3 * C))
            self.out_proj = nn.Linear(C, C)

        def forward(self, x: Any) -> Any:
            B, T, _ = x.shape
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # one GEMM, as ours
            q, k, v = qkv.view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=p if self.training else 0.0, is_causal=True)
            return self.out_proj(o.transpose(1, 2).reshape(B, T, C))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.self_attn = Attention()
            self.linear1, self.linear2 = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x: Any) -> Any:
            x = x + F.dropout(self.self_attn(self.norm1(x)), p, self.training)
            h = F.dropout(F.gelu(self.linear1(self.norm2(x)), approximate="tanh"), p, self.training)
            return x + F.dropout(self.linear2(h), p, self.training)

    class TorchGPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(vocab_size, C)
            self.wpe = nn.Embedding(block_size, C)
            self.blocks = nn.ModuleList([Block() for _ in range(n_layer)])
            self.ln_f = nn.LayerNorm(C)
            if not tie_weights:
                self.lm_head = nn.Linear(C, vocab_size, bias=False)

        def forward(self, idx: Any) -> Any:
            x = F.dropout(self.wte(idx) + self.wpe(torch.arange(idx.shape[1])), p, self.training)
            for block in self.blocks:
                x = block(x)
            head = self.wte.weight if tie_weights else self.lm_head.weight
            return F.linear(self.ln_f(x), head)

    twin = TorchGPT()
    if state_dict is not None:
        twin.load_state_dict({k: torch.from_numpy(np.array(backend.to_numpy(v), dtype=np.float32))
                              for k, v in state_dict.items()})
    return twin


def torch_training_step(twin: Any, idx: np.ndarray, targets: np.ndarray, lr: float = 3e-4) -> Callable[[], float]:
    """A closure running one forward + cross-entropy + backward + AdamW step of ``twin``; returns the loss."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(twin.parameters(), lr=lr)
    tidx, ttargets = torch.from_numpy(idx), torch.from_numpy(targets)
    vocab = twin.wte.weight.shape[0]

    def step() -> float:
        loss = F.cross_entropy(twin(tidx).view(-1, vocab), ttargets.view(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step
