"""Text generation: tokens streamed one by one, decoder-only beam search, text in and out, and the CLI.

References: ``GPT.generate`` (itself checked against transformers), an exhaustive search over every
continuation, and transformers' ``GPT2LMHeadModel.generate`` decoded by ``tokenizers`` on a tiny GPT-2
checkpoint with a BPE vocabulary trained here."""

import contextlib
import io
import itertools

import numpy as np
import pytest

from nptransformer import GPT
from nptransformer.generation.beam_lm import beam_search_lm
from nptransformer.generation.streaming import stream_tokens
from nptransformer.textgen import _complete_text, _held_back, generate_text, load_text_model, stream_text


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tk = pytest.importorskip("tokenizers", reason="the tokenizer is trained with Hugging Face tokenizers")
    pytest.importorskip("torch", reason="the checkpoint is written by transformers (torch)")
    tr = pytest.importorskip("transformers", reason="the checkpoint is written by transformers")
    import torch

    path = tmp_path_factory.mktemp("gpt2")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([open("examples/data/tiny_shakespeare_sample.txt", encoding="utf-8").read()], trainer)
    tok.save(str(path / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    config = tr.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=tok.get_vocab_size(), n_positions=48,
                           bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    model = tr.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape))  # sharper distributions than the init: varied, non-repeating text
    model.save_pretrained(path)
    return path, model, tok


def test_streamed_tokens_equal_generate():
    model = GPT(vocab_size=13, block_size=16, n_layer=2, n_head=2, d_model=16, dtype="float64")
    prompt = np.array([3, 1, 4, 1])
    greedy = model.generate(prompt[None], 8)[0, 4:].tolist()
    assert list(stream_tokens(model, prompt, 8)) == greedy
    assert list(stream_tokens(model, prompt, 8, use_cache=False)) == greedy
    sampled = model.generate(prompt[None], 8, do_sample=True, top_k=5, seed=7)[0, 4:].tolist()
    assert list(stream_tokens(model, prompt, 8, do_sample=True, top_k=5, seed=7)) == sampled
    assert list(stream_tokens(model, prompt, 8, eos_id=greedy[2])) == greedy[:greedy.index(greedy[2]) + 1]
    with pytest.raises(ValueError, match="exceeds the model's context of 16"):
        stream_tokens(model, prompt, 13)


def _sequence_log_prob(model, prompt, continuation):
    ids = np.array([list(prompt) + list(continuation)])
    logits = model(ids)[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(continuation))


def test_beam_search_finds_the_most_probable_continuation():
    from nptransformer import backend

    model = GPT(vocab_size=5, block_size=8, n_layer=1, n_head=2, d_model=8, dtype="float64",
                generator=backend.Generator(1))
    for p in model.parameters():
        p.data[...] *= 5  # peaked enough that greedy and the most probable continuation differ (seed 1)
    prompt = [1, 2]
    model.eval()
    brute = max(itertools.product(range(5), repeat=3), key=lambda c: _sequence_log_prob(model, prompt, c))
    best = beam_search_lm(model, prompt, beam_width=25, max_new_tokens=3, length_penalty=0.0)[0]
    assert best.tokens == brute
    np.testing.assert_allclose(best.log_prob, _sequence_log_prob(model, prompt, brute), rtol=1e-9, atol=1e-12)
    greedy = model.generate(np.array([prompt]), 3)[0, 2:].tolist()
    assert list(beam_search_lm(model, prompt, 1, 3, use_cache=False)[0].tokens) == greedy
    assert tuple(greedy) != brute  # the search did more than greedy decoding would
    three = beam_search_lm(model, prompt, beam_width=4, max_new_tokens=3, eos_id=0, n_best=3)
    assert len(three) == 3 and [h.score for h in three] == sorted([h.score for h in three], reverse=True)
    assert all(h.tokens[-1] == 0 for h in three if h.finished)


def test_greedy_text_equals_transformers(checkpoint):
    import torch

    path, ref, tok = checkpoint
    model, tokenizer = load_text_model(path)
    assert model.eos_token_id == tok.token_to_id("<|endoftext|>")
    for prompt in ("ROMEO:\nWhat light", "First Citizen: we are", "Ça — “quoted” 🎭 x"):
        ids = tok.encode(prompt).ids
        with torch.no_grad():
            out = ref.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, num_beams=1,
                               pad_token_id=0)[0, len(ids):].tolist()
        eos = model.eos_token_id
        out = out[:out.index(eos)] if eos in out else out
        assert list(stream_tokens(model, ids, 20, eos_id=eos))[:len(out)] == out
        # random weights emit byte tokens that need not form valid UTF-8, where Python's and Rust's
        # replacement of invalid bytes differ: the text is compared as bytes
        expected = tokenizer.decode_bytes(out).decode("utf-8", errors="replace")
        if all(ord(c) != 0xFFFD for c in expected):
            assert expected == tok.decode(out)
        assert generate_text(model, tokenizer, prompt, max_new_tokens=20) == expected
        assert "".join(stream_text(model, tokenizer, prompt, max_new_tokens=20)) == expected


def test_stop_strings_cut_the_text_and_streaming_agrees(checkpoint):
    path, _, _ = checkpoint
    model, tokenizer = load_text_model(path)
    full = generate_text(model, tokenizer, "KING:", max_new_tokens=30, eos_id=None)
    assert len(full) > 10
    stop = full[5:8]
    expected = full[:full.find(stop)]
    assert generate_text(model, tokenizer, "KING:", max_new_tokens=30, eos_id=None, stop=[stop, "\x00"]) == expected
    pieces = list(stream_text(model, tokenizer, "KING:", max_new_tokens=30, eos_id=None, stop=stop))
    assert "".join(pieces) == expected
    beam = generate_text(model, tokenizer, "KING:", max_new_tokens=30, eos_id=None, num_beams=3, stop="e")
    assert "e" not in beam


def test_context_is_respected(checkpoint):
    path, _, _ = checkpoint
    model, tokenizer = load_text_model(path)
    prompt = "To be, or not to be"
    n = len(tokenizer.encode(prompt))
    tokens = list(stream_tokens(model, tokenizer.encode(prompt), 48 - n))
    longest = generate_text(model, tokenizer, prompt, max_new_tokens=1000, eos_id=None)
    assert longest == tokenizer.decode(tokens)  # 1000 was reduced to the room the context leaves
    with pytest.raises(ValueError, match="no room for a new token"):
        generate_text(model, tokenizer, "word " * 60)
    with pytest.raises(ValueError, match="num_beams"):
        generate_text(model, tokenizer, prompt, num_beams=0)
    with pytest.raises(ValueError, match="stop must be"):
        generate_text(model, tokenizer, prompt, stop=[""])


def test_cut_characters_and_stop_prefixes_are_held_back():
    snowman = "☃".encode()
    assert _complete_text(b"ab" + snowman[:2]) == "ab"
    assert _complete_text(b"ab" + snowman) == "ab☃"
    assert _held_back("the en", ("end", "zz")) == 2
    assert _held_back("the e", ("xyz",)) == 0


def test_cli_prints_the_prompt_and_its_continuation(checkpoint):
    from nptransformer.apps.cli import build_parser

    path, _, _ = checkpoint
    model, tokenizer = load_text_model(path)
    for extra, kwargs in (([], {}), (["--num-beams", "3"], {"num_beams": 3}),
                          (["--sample", "--seed", "3", "--top-k", "10"], {"do_sample": True, "seed": 3, "top_k": 10})):
        args = build_parser().parse_args(["generate", "--model", str(path), "--prompt", "Thou", "--max-new-tokens",
                                          "12", *extra])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert args.run(args) == 0
        assert out.getvalue() == "Thou" + generate_text(model, tokenizer, "Thou", max_new_tokens=12, **kwargs) + "\n"
