"""The state every decoding loop runs in, and the argument checks they share."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from .. import backend
from ..grad_mode import no_grad


@contextlib.contextmanager
def inference(model: Any, like: Any) -> Iterator[None]:
    """Run a decoding loop: no saved contexts, dropout off, new arrays on ``like``'s backend.

    Each module's training flag is restored afterwards (not just the
    model's), so a model that was partly frozen comes back as it was.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with no_grad(), backend.use(backend.backend_of(like)):
            yield
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)


def check_token_id(name: str, token: Any, vocab_size: int) -> None:
    """Raise ValueError unless ``token`` is an int in [0, vocab_size) (bos_id, eos_id, pad_id)."""
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
        raise ValueError(f"{name} must be a token id in [0, {vocab_size}), got {token!r}")
