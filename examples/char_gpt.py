"""A character-level GPT on Shakespeare: train, validate on the held-out last 10%, sample, plot the loss curves.

Run from the repository root (NumPy CPU; about 16 minutes on 2 cores, validation loss about 1.53):

    python examples/char_gpt.py
    python examples/char_gpt.py --steps 300 --eval-every 100        # a quick look
    python examples/char_gpt.py --checkpoint runs/char.npz --resume  # stop and continue at will

This is ``nptransformer train-char --text examples/data/shakespeare.txt``
with that file as the default text; every option of that command works here
(``--help``). The training code is :func:`nptransformer.apps.train_char.train_char_gpt`;
docs/training.md records the measured validation loss and wall time.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from nptransformer.__main__ import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--text" not in argv:
        argv = ["--text", str(ROOT / "examples" / "data" / "shakespeare.txt"), *argv]
    sys.exit(main(["train-char", *argv]))
