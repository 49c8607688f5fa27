"""The workflow's student stage in the low-label regime: labels only trains on the labelled rows alone (also
for a unimodal student), and one teacher-output cache file serves every seed and labelled fraction."""

import json
import math

import pytest

from hf_msd.experiment import parse_arguments
from hf_msd.experiment.workflow import Run, distill_student, load_data, train_or_load_teacher

TRAIN, BATCH = 40, 4


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("low_label")
    run = _run(root / "teacher_run")
    return root, run.dataset, train_or_load_teacher(run)


def _run(output_dir, *flags, dataset=None):
    argv = ["examples/configs/tiny_easy_vqa.yaml", "--output_dir", str(output_dir)]
    argv += ["--max_train_samples", str(TRAIN), "--per_device_train_batch_size", str(BATCH), *flags]
    model_args, data_args, exp_args, training_args = parse_arguments(argv)
    return Run(model_args, data_args, exp_args, training_args, dataset or load_data(data_args, seed=0))


@pytest.mark.parametrize("modalities", ["text,image", "image", "text"])
def test_labels_only_trains_on_the_labelled_rows(teacher, modalities):
    root, dataset, (model, processor, settings) = teacher
    out = root / f"none_{modalities}"
    flags = ["--method", "none", "--labeled_fraction", "0.25", "--student_modalities", modalities]
    student = distill_student(_run(out, *flags, dataset=dataset), model, processor, settings)
    assert student.config.modalities == modalities.split(",")
    steps = json.loads((out / "student" / "train_results.json").read_text())["steps"]
    labelled = round(0.25 * TRAIN)  # 10 of 40: one epoch is ceil(10 / 4) = 3 steps, not 10
    assert steps == math.ceil(labelled / BATCH)


def test_one_teacher_cache_serves_every_seed_and_fraction(teacher):
    root, dataset, (model, processor, settings) = teacher
    cache = root / "cache"
    for seed, fraction in ((0, "0.25"), (1, "0.25"), (0, "0.5")):
        flags = ["--method", "kd", "--labeled_fraction", fraction, "--seed", str(seed)]
        flags += ["--teacher_cache_dir", str(cache), "--max_steps", "1"]
        distill_student(
            _run(root / f"kd_{seed}_{fraction}", *flags, dataset=dataset), model, processor, settings
        )
    files = sorted(p.name for p in cache.glob("teacher-outputs-*.arrow"))
    assert len(files) == 2, files  # the train split and the validation split, computed once each
