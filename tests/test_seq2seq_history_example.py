"""examples/seq2seq_history.py end to end on a tiny budget: every model trains, is evaluated per length,
and the figures and the JSON of numbers are written."""

import json

import pytest


@pytest.fixture(scope="module")
def example(load_example):
    return load_example("seq2seq_history")


def test_the_models_have_comparable_sizes(example):
    sizes = {kind: example.build(kind, 22, seed=0).num_parameters() for kind in ("rnn", "bahdanau", "luong",
                                                                                 "transformer")}
    assert max(sizes.values()) < 1.1 * min(sizes.values()), sizes


def test_a_tiny_run_writes_every_figure_and_the_numbers(example, tmp_path):
    pytest.importorskip("matplotlib", reason="the example draws its figures with matplotlib")
    assert example.main(["--steps", "4", "--batch-size", "8", "--train-max-len", "5", "--eval-n", "4",
                         "--step-lengths", "4,8", "--out", str(tmp_path)]) == 0
    for name in ("seq2seq_accuracy_vs_length.png", "seq2seq_attention_maps.png", "seq2seq_step_time.png"):
        assert (tmp_path / name).stat().st_size > 0
    numbers = json.loads((tmp_path / "seq2seq_history.json").read_text())
    assert len(numbers["results"]) == 6
    for result in numbers["results"].values():
        assert sorted(int(n) for n in result["by_length"]) == list(range(5, 11))
        for metrics in result["by_length"].values():
            assert 0.0 <= metrics["exact_match"] <= metrics["token_accuracy"] <= 1.0  # a right decode is right forced
    assert set(numbers["step_times"]) == {"LSTM", "TransformerEncoderLayer"}
