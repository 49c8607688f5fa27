"""hf_msd.trainers.msd_setup: the pieces MSDTrainer runs around its loss, on small hand-made inputs."""

import datasets
import pytest
import torch

from hf_msd.trainers.msd_setup import MetaSchedule, check_held_out_source, first_examples, split_held_out


def test_meta_schedule_runs_once_at_every_interval_th_step():
    schedule = MetaSchedule(3)
    # Micro-batches of optimizer steps 0, 0, 1, 2, 3, 3, 6: the meta step runs at the first of 0, 3 and 6.
    assert [schedule.due(step) for step in (0, 0, 1, 2, 3, 3, 6)] == [
        True,
        False,
        False,
        False,
        True,
        False,
        True,
    ]


def test_first_examples_of_a_stream_and_of_a_list():
    rows = {"x": [1, 2, 3]}
    stream = datasets.Dataset.from_dict(rows).to_iterable_dataset()
    assert first_examples(stream, 2) == [{"x": 1}, {"x": 2}]
    assert first_examples(stream, 2) == [{"x": 1}, {"x": 2}]  # read from the start again, not consumed
    assert first_examples([{"x": 1}], 2) == [{"x": 1}]


def test_held_out_split_is_the_seeded_permutation():
    dataset = datasets.Dataset.from_dict({"x": list(range(10))})
    held, rest = split_held_out(dataset, 0.25, seed=3)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert held["x"] == order[:2] and rest["x"] == order[2:]  # round(2.5) = 2 held out
    with pytest.raises(ValueError, match="leaves no training data"):
        split_held_out(datasets.Dataset.from_dict({"x": [0]}), 0.5, seed=0)


def test_learned_weights_without_held_out_data_are_refused_by_name():
    with pytest.raises(ValueError, match="pass an eval_dataset or set meta_validation_fraction > 0"):
        check_held_out_source(None, 0.0)
    with pytest.raises(ValueError, match="got a dict of several"):
        check_held_out_source({"a": [], "b": []}, 0.0)
    check_held_out_source({"a": [], "b": []}, 0.2)
