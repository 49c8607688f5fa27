"""On-policy distillation of generative students (``lmbda``): the arguments, and the trainers against hand
computations on the student's own generated answers."""

from __future__ import annotations

import pytest
from transformers import HfArgumentParser

from hf_msd.trainers import DistillationTrainingArguments, MSDTrainingArguments


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lmbda": -0.1}, r"lmbda must be in \[0, 1\].*-0.1"),
        ({"lmbda": 1.5}, r"lmbda must be in \[0, 1\].*1.5"),
        ({"lmbda": float("nan")}, r"lmbda must be in \[0, 1\].*nan"),
        ({"max_new_tokens": 0}, r"max_new_tokens must be an integer >= 1, got 0"),
        ({"max_new_tokens": 2.5}, r"max_new_tokens must be an integer >= 1, got 2.5"),
        ({"generation_temperature": 0.0}, r"generation_temperature must be a finite number > 0, got 0.0"),
        ({"generation_temperature": float("inf")}, r"generation_temperature must be .* > 0, got inf"),
    ],
)
def test_on_policy_arguments_out_of_range_are_refused_by_name(tmp_path, overrides, message):
    for cls in (DistillationTrainingArguments, MSDTrainingArguments):
        with pytest.raises(ValueError, match=message):
            cls(output_dir=str(tmp_path), **overrides)


def test_on_policy_arguments_parse_from_the_command_line(tmp_path):
    (args,) = HfArgumentParser(MSDTrainingArguments).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--lmbda",
            "0.5",
            "--max_new_tokens",
            "4",
            "--generation_do_sample",
            "true",
            "--generation_temperature",
            "0.9",
        ]
    )
    assert (args.lmbda, args.max_new_tokens, args.generation_do_sample, args.generation_temperature) == (
        0.5,
        4,
        True,
        0.9,
    )
    default = DistillationTrainingArguments(output_dir=str(tmp_path))
    assert (default.lmbda, default.max_new_tokens, default.generation_do_sample) == (0.0, 128, False)
