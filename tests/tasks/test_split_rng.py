from metaray.tasks.base import split_rng


def test_streams_differ_by_family_split_and_id():
    draw = lambda *key: split_rng(*key).random()  # noqa: E731
    assert draw("halfcheetah-vel", "train", 0) != draw("halfcheetah-dir", "train", 0)  # same 8-byte prefix
    assert draw("bandit", "train", 0) != draw("bandit", "test", 0)
    assert draw("bandit", "train", 0) != draw("bandit", "train", 1)
    assert draw("bandit", "train", 7) == draw("bandit", "train", 7)
