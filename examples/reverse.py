"""The encoder-decoder learns to reverse digit sequences of length 3 to 12, then decodes greedily and with beam search.

Run from the repository root (NumPy CPU; about 3 minutes on 2 cores):

    python examples/reverse.py
    python examples/reverse.py --steps 3000 --checkpoint runs/reverse.npz   # longer, resumable with --resume

The model (:func:`nptransformer.apps.demo.reversal_model`) is trained by
:func:`nptransformer.apps.demo.train_reversal`; accuracy is the fraction of 1000
held-out sequences, never drawn for training, whose greedy decode is exactly
the reversal. docs/training.md records the measured numbers.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nptransformer.backend import Generator  # noqa: E402
from nptransformer.data import ReversalTask  # noqa: E402
from nptransformer.apps.demo import exact_match, show_decodes, train_reversal  # noqa: E402
from nptransformer.generation import beam_search  # noqa: E402
from nptransformer.training import blas_threads  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint", default=None, help="checkpoint file, saved at the end (and read with --resume)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (0: BLAS's default)")
    args = parser.parse_args()

    task = ReversalTask(min_len=3, max_len=12)
    start, cpu_start = time.perf_counter(), time.process_time()
    with blas_threads(args.threads or None):
        model, _ = train_reversal(args.steps, task, batch_size=args.batch_size, eval_every=max(1, args.steps // 5),
                                  checkpoint=args.checkpoint, resume=args.resume)
        trained = time.perf_counter() - start
        accuracy = exact_match(model, task, n=1000)
        print(f"\ntraining: {trained:.0f}s; held-out exact-sequence accuracy (greedy, 1000 sequences): {accuracy:.1%}")

        print("\ngreedy decodes of held-out sequences:")
        show_decodes(model, task, n=8)

        print("\nbeam search (width 4, GNMT length penalty 0.6), 3 best hypotheses each:")
        (src, _), _ = task.batch(Generator(99), 3, held_out=True)
        for i, hypotheses in enumerate(beam_search(model, src, beam_width=4, max_len=task.max_len + 1,
                                                   length_penalty=0.6, bos_id=task.BOS, eos_id=task.EOS, n_best=3)):
            print(f"  {task.to_text(src[i])}")
            for h in hypotheses:
                print(f"      {task.to_text(h.tokens):<32} log P = {h.log_prob:8.4f}   score = {h.score:8.4f}")
    print(f"\ntotal wall time {time.perf_counter() - start:.0f}s (CPU time {time.process_time() - cpu_start:.0f}s)")
    return 0 if accuracy >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
