"""The teacher-output cache (hf_msd/teacher_cache.py) and the fingerprint it shares with saliency.

References are computed independently: the teacher called by hand on each input, the top-k
reconstruction and the KD loss written out on small tensors.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import subprocess

import datasets
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PretrainedConfig

from hf_msd import MultimodalDataCollator, precompute_teacher_outputs
from hf_msd.architectures import default_modalities
from hf_msd.distillation.losses import MULTI_LABEL, SINGLE_LABEL
from hf_msd.modalities.modality import Modality
from hf_msd.teacher_outputs.cache import compress_topk, expand_topk, teacher_outputs_fingerprint
from hf_msd.trainers import (
    DistillationTrainer,
    DistillationTrainingArguments,
    MSDTrainer,
    MSDTrainingArguments,
)
from tests.helpers.models import QUESTIONS, raw_dataset, tiny_images, tiny_model, tiny_processor
from tests.helpers.msd import ThreeInputModel
from tests.test_msd_trainer import ours_by_hand


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    processor = tiny_processor(tmp_path_factory.mktemp("processor"))
    return {
        "processor": processor,
        "collator": MultimodalDataCollator(processor, max_length=8),
        "teacher": tiny_model(seed=0),
        "data": raw_dataset(),
    }


@contextlib.contextmanager
def teacher_batches(model):
    """Records the batch size of every forward call of ``model``."""
    sizes: list[int] = []
    handle = model.register_forward_hook(
        lambda module, args, kwargs, out: sizes.append(len(out.logits)), with_kwargs=True
    )
    try:
        yield sizes
    finally:
        handle.remove()


def column(dataset, name):
    return torch.tensor(dataset[name], dtype=torch.float32)


# ---- what is stored -----------------------------------------------------------------------------------


def test_columns_are_the_teacher_on_x_and_on_each_x_m(tmp_path, setup):
    teacher, collator, data = setup["teacher"], setup["collator"], setup["data"]
    out = precompute_teacher_outputs(teacher, data, data_collator=collator, batch_size=5, cache_dir=tmp_path)
    full, text, image = ours_by_hand(teacher, collator([data[i] for i in range(len(data))]))
    torch.testing.assert_close(column(out, "teacher_logits"), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(column(out, "teacher_logits_text"), text, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(column(out, "teacher_logits_image"), image, rtol=1e-5, atol=1e-5)
    assert out["question"] == data["question"] and len(out) == len(data)
    assert [f for f in os.listdir(tmp_path) if f.endswith(".arrow")] == [
        f"teacher-outputs-{out._fingerprint}.arrow"
    ]
    assert out.cache_files  # memory-mapped from the Arrow file


class ThreeInputTeacher(ThreeInputModel):
    config = PretrainedConfig(num_labels=3, problem_type=SINGLE_LABEL)


def test_three_modalities_also_store_x_without_m(tmp_path):
    teacher = ThreeInputTeacher()
    generator = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({key: torch.randn(6, 4, generator=generator).tolist() for key in "abc"})
    modalities = [Modality(key, keys=[key]) for key in "abc"]

    def collate(examples):
        return {key: torch.tensor([e[key] for e in examples]) for key in "abc"}

    out = precompute_teacher_outputs(teacher, data, modalities, collate, cache_dir=tmp_path)
    x = collate([data[i] for i in range(6)])
    with torch.no_grad():
        torch.testing.assert_close(column(out, "teacher_logits"), teacher(**x).logits)
        torch.testing.assert_close(column(out, "teacher_logits_b"), teacher(b=x["b"]).logits)
        torch.testing.assert_close(
            column(out, "teacher_logits_without_b"), teacher(a=x["a"], c=x["c"]).logits
        )


# ---- fingerprint: recompute on every change, reuse otherwise --------------------------------------------


def swapped_columns(teacher):
    """A copy of ``teacher`` with two input columns of one weight matrix swapped (sums are unchanged)."""
    copied = copy.deepcopy(teacher)
    weight = copied.classifier.weight if hasattr(copied, "classifier") else None
    weight = (
        weight
        if weight is not None and weight.dim() == 2
        else next(p for p in copied.parameters() if p.dim() == 2)
    )
    with torch.no_grad():
        weight[:, [0, 1]] = weight[:, [1, 0]]
    return copied


def renamed_labels(teacher):
    copied = copy.deepcopy(teacher)
    copied.config.id2label = {i: f"answer_{i}" for i in range(copied.config.num_labels)}
    return copied


CHANGES = {
    "dataset content (middle example)": lambda s: {
        "dataset": raw_dataset(
            questions=[q if i != 6 else "what is the color ?" for i, q in enumerate(s["data"]["question"])]
        )
    },
    "weight column permutation": lambda s: {"teacher": swapped_columns(s["teacher"])},
    "config": lambda s: {"teacher": renamed_labels(s["teacher"])},
    "collator max length": lambda s: {"data_collator": MultimodalDataCollator(s["processor"], max_length=5)},
    "modality spec": lambda s: {
        "modalities": [
            default_modalities(s["teacher"])[0],
            Modality("image", ["pixel_values"], removal="fill"),
        ]
    },
    "storage dtype": lambda s: {"storage_dtype": "float16"},
    "top-k storage": lambda s: {"top_k": 2},
}


@pytest.fixture(scope="module")
def cached_once(setup, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    with teacher_batches(setup["teacher"]) as sizes:
        out = precompute_teacher_outputs(
            setup["teacher"], setup["data"], data_collator=setup["collator"], cache_dir=cache_dir
        )
    assert sum(sizes) == 3 * len(setup["data"])  # x, x_text, x_image once each
    return cache_dir, out


def base_kwargs(setup, cache_dir):
    return {
        "teacher": setup["teacher"],
        "dataset": setup["data"],
        "data_collator": setup["collator"],
        "cache_dir": cache_dir,
    }


def test_unchanged_inputs_reuse_the_cache_without_running_the_teacher(setup, cached_once):
    cache_dir, first = cached_once
    # Equal content, new objects: a reloaded teacher, a fresh collator, the data set rebuilt. The teacher was
    # loaded from elsewhere and evaluated by a Trainer since (which sets config.use_cache = False): neither
    # changes what it computes.
    teacher = copy.deepcopy(setup["teacher"])
    teacher.config.use_cache, teacher.config._name_or_path = False, "/somewhere/else"
    kwargs = {
        **base_kwargs(setup, cache_dir),
        "teacher": teacher,
        "dataset": raw_dataset(),
        "data_collator": MultimodalDataCollator(setup["processor"], max_length=8),
    }
    with teacher_batches(teacher) as sizes:
        again = precompute_teacher_outputs(**kwargs)
    assert sizes == [] and again._fingerprint == first._fingerprint
    assert again["teacher_logits"] == first["teacher_logits"]


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_change_recomputes(setup, cached_once, change):
    cache_dir, first = cached_once
    kwargs = {**base_kwargs(setup, cache_dir), **CHANGES[change](setup)}
    if change == "weight column permutation":  # the old sum / sum-of-squares fingerprint could not see it
        old, new = setup["teacher"].state_dict(), kwargs["teacher"].state_dict()
        assert all(torch.allclose(old[k].sum(), new[k].sum()) for k in old)
        assert any(not torch.equal(old[k], new[k]) for k in old)
    files_before = set(os.listdir(cache_dir))
    with teacher_batches(kwargs["teacher"]) as sizes:
        out = precompute_teacher_outputs(**kwargs)
    assert sum(sizes) >= 3 * len(kwargs["dataset"]), "the teacher was not rerun"
    assert out._fingerprint != first._fingerprint
    assert files_before < set(os.listdir(cache_dir))  # a new file; the old one is kept


def test_image_size_of_the_processor_changes_the_fingerprint(setup, tmp_path):
    teacher, data, modalities = setup["teacher"], setup["data"], default_modalities(setup["teacher"])
    bigger = MultimodalDataCollator(tiny_processor(tmp_path, image_size=32), max_length=8)
    same = MultimodalDataCollator(tiny_processor(tmp_path / "same"), max_length=8)
    base = teacher_outputs_fingerprint(teacher, data, modalities, setup["collator"])
    assert teacher_outputs_fingerprint(teacher, data, modalities, same) == base
    assert teacher_outputs_fingerprint(teacher, data, modalities, bigger) != base


def test_in_memory_dataset_defaults_to_the_datasets_cache_and_honours_disable_caching(
    setup, tmp_path, monkeypatch
):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path))
    kwargs = {**base_kwargs(setup, None), "teacher": copy.deepcopy(setup["teacher"])}
    assert not setup["data"].cache_files  # built in memory: `map` alone would not cache it
    for expected_calls in (True, False):
        with teacher_batches(kwargs["teacher"]) as sizes:
            out = precompute_teacher_outputs(**kwargs)
        assert bool(sizes) == expected_calls
    assert os.path.isfile(tmp_path / "hf_msd_teacher_outputs" / f"teacher-outputs-{out._fingerprint}.arrow")
    datasets.disable_caching()
    try:
        for _ in range(2):  # no cache directory: kept in memory, computed every time
            with teacher_batches(kwargs["teacher"]) as sizes:
                precompute_teacher_outputs(**kwargs)
            assert sizes
    finally:
        datasets.enable_caching()


# ---- random inputs are refused ------------------------------------------------------------------------


class NoisyCollator(MultimodalDataCollator):
    def __call__(self, examples):
        batch = super().__call__(examples)
        batch["pixel_values"] = batch["pixel_values"] + 0.1 * torch.randn_like(batch["pixel_values"])
        return batch


def test_random_collator_or_transform_is_refused_unless_declared_deterministic(setup, tmp_path):
    noisy = NoisyCollator(setup["processor"], max_length=8)
    with pytest.raises(ValueError, match=r"random.*\['pixel_values'\].*deterministic_inputs=True"):
        precompute_teacher_outputs(setup["teacher"], setup["data"], data_collator=noisy, cache_dir=tmp_path)
    assert not os.listdir(tmp_path)  # refused before any work

    def random_question(batch):
        return {**batch, "question": [random.choice(QUESTIONS) for _ in batch["question"]]}

    transformed = setup["data"].with_transform(random_question)
    with pytest.raises(ValueError, match="input_ids"):
        precompute_teacher_outputs(
            setup["teacher"], transformed, data_collator=setup["collator"], cache_dir=tmp_path
        )
    out = precompute_teacher_outputs(
        setup["teacher"], setup["data"], data_collator=noisy, cache_dir=tmp_path, deterministic_inputs=True
    )
    assert "teacher_logits" in out.column_names


def test_bad_arguments_are_refused_naming_the_field(setup, tmp_path):
    common = {"teacher": setup["teacher"], "data_collator": setup["collator"], "cache_dir": tmp_path}
    with pytest.raises(TypeError, match=r"Dataset\.from_list"):
        precompute_teacher_outputs(dataset=[setup["data"][0]], **common)
    with pytest.raises(ValueError, match="storage_dtype"):
        precompute_teacher_outputs(dataset=setup["data"], storage_dtype="int8", **common)
    with pytest.raises(ValueError, match="top_k"):
        precompute_teacher_outputs(dataset=setup["data"], top_k=3, **common)  # 3 labels: top 3 is all


# ---- the trainers read the cache: same training, no teacher pass --------------------------------------

TRAINING = {
    "temperature": 2.0,
    "hard_label_weight": 0.3,
    "kd_loss_weight": 0.7,
    "per_device_train_batch_size": 4,
    "learning_rate": 5e-2,
    "max_steps": 2,
    "remove_unused_columns": False,
    "report_to": [],
    "save_strategy": "no",
    "use_cpu": True,
    "disable_tqdm": True,
    "seed": 0,
}


def train(setup, tmp_path, dataset, weighting: str | None):
    student = tiny_model(seed=1)
    if weighting is None:
        trainer_class, args = DistillationTrainer, DistillationTrainingArguments(tmp_path, **TRAINING)
    else:
        trainer_class = MSDTrainer
        args = MSDTrainingArguments(
            tmp_path, modality_weighting=weighting, modality_loss_weight=0.4, **TRAINING
        )
    trainer = trainer_class(
        model=student,
        teacher_model=setup["teacher"],
        args=args,
        train_dataset=dataset,
        data_collator=setup["collator"],
    )
    with teacher_batches(setup["teacher"]) as sizes:
        trainer.train()
    return student, trainer, sizes


@pytest.mark.parametrize("weighting", [None, "population", "instance"])
def test_cached_training_equals_online_training_without_teacher_passes(setup, tmp_path, weighting):
    cached = precompute_teacher_outputs(
        setup["teacher"], setup["data"], data_collator=setup["collator"], cache_dir=tmp_path / "cache"
    )
    online_student, online, online_sizes = train(setup, tmp_path / "online", setup["data"], weighting)
    cached_student, trainer, cached_sizes = train(setup, tmp_path / "cached", cached, weighting)
    assert max(online_sizes) > 1
    # MSDTrainer checks the modality spec by running the teacher on one example; nothing else runs it.
    assert all(size == 1 for size in cached_sizes)
    moved = False
    for (name, a), b in zip(online_student.named_parameters(), cached_student.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
        moved = moved or not torch.equal(a, tiny_model(seed=1).get_parameter(name))
    assert moved
    if weighting == "population":
        torch.testing.assert_close(trainer.weighting(1), online.weighting(1), rtol=1e-5, atol=1e-7)


# ---- top-k storage ------------------------------------------------------------------------------------

LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0], [0.1, 0.2, 3.0, 0.0, -0.5]])
TOP = [[0, 1], [2, 1]]  # the two largest logits of each row, by hand


def hand_topk_single(row, top):
    """softmax(row) on the top classes, the remaining mass spread uniformly over the others."""
    exps = [math.exp(v) for v in row]
    p = [e / sum(exps) for e in exps]
    rest = (1 - sum(p[i] for i in top)) / (len(row) - len(top))
    return [p[i] if i in top else rest for i in range(len(row))]


def hand_kd(teacher_probs_at_t, student_row, temperature):
    """T^2 * KL(teacher || softmax(student / T)) for one example."""
    s = [v / temperature for v in student_row]
    log_z = math.log(sum(math.exp(v) for v in s))
    return temperature**2 * sum(p * (math.log(p) - (v - log_z)) for p, v in zip(teacher_probs_at_t, s))


def tempered(probs, temperature):
    """softmax(log(probs) / T)."""
    powered = [p ** (1 / temperature) for p in probs]
    return [v / sum(powered) for v in powered]


def test_topk_single_label_reconstruction_and_its_kd_effect_match_the_hand_computation():
    from hf_msd.distillation.losses import soft_target_loss

    values, indices, rest = compress_topk(LOGITS, 2, SINGLE_LABEL)
    assert indices.tolist() == TOP
    dense = expand_topk(values, indices, rest, num_labels=5)
    for row, top, got in zip(LOGITS.tolist(), TOP, dense.softmax(-1).tolist()):
        assert got == pytest.approx(hand_topk_single(row, top), rel=1e-6)
    student = torch.tensor([[0.5, 0.0, -0.5, 1.0, 0.2], [1.0, -1.0, 0.0, 0.3, 0.3]])
    temperature = 2.0
    with_topk = soft_target_loss(student, dense, problem_type=SINGLE_LABEL, temperature=temperature)
    with_dense = soft_target_loss(student, LOGITS, problem_type=SINGLE_LABEL, temperature=temperature)
    for i, (row, top) in enumerate(zip(LOGITS.tolist(), TOP)):
        q = tempered(hand_topk_single(row, top), temperature)
        p = tempered([math.exp(v) for v in row], temperature)
        assert with_topk[i].item() == pytest.approx(hand_kd(q, student[i].tolist(), temperature), rel=1e-5)
        assert with_dense[i].item() == pytest.approx(hand_kd(p, student[i].tolist(), temperature), rel=1e-5)
    assert not torch.allclose(with_topk, with_dense)  # a real, measured approximation


def test_topk_multi_label_keeps_top_logits_and_spreads_the_rest_of_the_sigmoid_mass():
    values, indices, rest = compress_topk(LOGITS, 2, MULTI_LABEL)
    dense = expand_topk(values, indices, rest, num_labels=5)
    for row, top, got in zip(LOGITS.tolist(), TOP, dense.tolist()):
        others = [1 / (1 + math.exp(-row[j])) for j in range(5) if j not in top]
        mean = sum(others) / len(others)
        want = [row[i] if i in top else math.log(mean / (1 - mean)) for i in range(5)]
        assert got == pytest.approx(want, rel=1e-5)


def test_topk_columns_feed_the_trainer_the_reconstructed_teacher(setup, tmp_path):
    teacher, student = tiny_model(num_labels=5, seed=0), tiny_model(num_labels=5, seed=1)
    with torch.no_grad():  # a confident teacher, so that the tail matters
        teacher.classifier.weight.mul_(40.0)
    cached = precompute_teacher_outputs(
        teacher,
        setup["data"],
        data_collator=setup["collator"],
        top_k=2,
        storage_dtype="float32",
        cache_dir=tmp_path,
    )
    assert {
        "teacher_logits__topk_logits",
        "teacher_logits__topk_indices",
        "teacher_logits__rest_logit",
    } <= set(cached.column_names)
    args = DistillationTrainingArguments(
        tmp_path, **{**TRAINING, "hard_label_weight": 0.0, "kd_loss_weight": 1.0}
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=cached, data_collator=setup["collator"]
    )
    batch = trainer._prepare_inputs(setup["collator"]([cached[i] for i in range(4)]))
    with teacher_batches(teacher) as sizes:
        loss = trainer.compute_loss(student, batch)
    assert sizes == []
    full, _, _ = ours_by_hand(teacher, batch)
    with torch.no_grad():
        s = student(
            **{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")}
        ).logits
    want, dense = [], []
    for row, student_row in zip(full.tolist(), s.tolist()):
        top = sorted(range(5), key=lambda i: -row[i])[:2]
        want.append(hand_kd(tempered(hand_topk_single(row, top), 2.0), student_row, 2.0))
        dense.append(hand_kd(tempered([math.exp(v) for v in row], 2.0), student_row, 2.0))
    assert loss.item() == pytest.approx(sum(want) / 4, rel=1e-4)
    assert abs(loss.item() - sum(dense) / 4) > 1e-3 * loss.item()  # top-k is an approximation


def test_float16_storage_rounds_to_half_precision(setup, tmp_path):
    out = precompute_teacher_outputs(
        setup["teacher"],
        setup["data"],
        data_collator=setup["collator"],
        storage_dtype="float16",
        cache_dir=tmp_path,
    )
    assert out.features["teacher_logits"].feature.dtype == "float16"
    full, _, _ = ours_by_hand(setup["teacher"], setup["collator"]([setup["data"][i] for i in range(12)]))
    torch.testing.assert_close(column(out, "teacher_logits"), full.half().float(), rtol=0, atol=2e-3)


def test_saliency_fingerprint_sees_permutations_collator_settings_lambdas_and_list_content(setup):
    from hf_msd.distillation.saliency import saliency_fingerprint

    teacher, modalities = setup["teacher"], default_modalities(setup["teacher"])
    examples = [setup["data"][i] for i in range(6)]
    base = saliency_fingerprint(teacher, examples, modalities, setup["collator"])
    assert base == saliency_fingerprint(copy.deepcopy(teacher), list(examples), modalities, setup["collator"])
    changed_middle = [*examples[:3], {**examples[3], "question": "what shape ?"}, *examples[4:]]
    assert saliency_fingerprint(teacher, changed_middle, modalities, setup["collator"]) != base
    assert saliency_fingerprint(swapped_columns(teacher), examples, modalities, setup["collator"]) != base
    shorter = MultimodalDataCollator(setup["processor"], max_length=5)
    assert saliency_fingerprint(teacher, examples, modalities, shorter) != base

    def kl(a, b, problem_type):
        return F.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="none").sum(-1)

    one, other = (lambda a, b, p: kl(a, b, p)), (lambda a, b, p: kl(b, a, p))
    assert one.__qualname__ == other.__qualname__  # both "<lambda>": names cannot tell them apart
    first = saliency_fingerprint(teacher, examples, modalities, setup["collator"], saliency_fn=one)
    assert first != saliency_fingerprint(teacher, examples, modalities, setup["collator"], saliency_fn=other)


@pytest.mark.multiprocess
def test_two_processes_compute_once_on_the_main_process_and_share_the_file(tmp_path):
    from tests.helpers.launch import REPO_ROOT, SCRIPTS, two_process_launch

    command, env = two_process_launch(str(SCRIPTS / "teacher_cache_script.py"), str(tmp_path))
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"launch failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["teacher_examples"] == 3 * 12 and ranks[1]["teacher_examples"] == 0
    assert ranks[0]["teacher_logits"] == ranks[1]["teacher_logits"]
    name = f"teacher-outputs-{ranks[0]['fingerprint']}.arrow"
    assert sorted(os.listdir(tmp_path / "cache")) == [name, f"{name}.sha256"]  # one file and its checksum


# ---- faults: files changed in place, broken cache files, stale temporary files ----------------------------


def path_dataset(directory) -> Dataset:
    """raw_dataset's rows with the images stored as PNG files that the rows refer to by path."""
    data = raw_dataset()
    paths = []
    for i, image in enumerate(tiny_images(len(data))):
        image.save(directory / f"{i}.png")
        paths.append(str(directory / f"{i}.png"))
    return Dataset.from_dict({**data.to_dict(), "image": paths}, features=data.features)


def test_an_image_replaced_at_the_same_path_recomputes_as_a_fresh_pass(setup, tmp_path):
    teacher, collator = setup["teacher"], setup["collator"]
    (tmp_path / "images").mkdir()
    data = path_dataset(tmp_path / "images")
    first = precompute_teacher_outputs(teacher, data, data_collator=collator, cache_dir=tmp_path / "cache")
    tiny_images(1, seed=5)[0].save(tmp_path / "images" / "3.png")  # same path, other pixels
    again = precompute_teacher_outputs(teacher, data, data_collator=collator, cache_dir=tmp_path / "cache")
    fresh = precompute_teacher_outputs(teacher, data, data_collator=collator, cache_dir=tmp_path / "fresh")
    torch.testing.assert_close(column(again, "teacher_logits"), column(fresh, "teacher_logits"))
    assert not torch.equal(column(first, "teacher_logits")[3], column(fresh, "teacher_logits")[3])


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    damaged = {
        "truncated": data[: len(data) // 2],
        "zero bytes": b"",
        "random bytes": random.Random(0).randbytes(len(data)),
        "one byte changed": data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:],
    }
    path.write_bytes(damaged[how])


@pytest.mark.parametrize("how", ["truncated", "zero bytes", "random bytes", "one byte changed"])
def test_a_damaged_cache_file_is_named_and_computed_again(setup, tmp_path, how, caplog):
    kwargs = base_kwargs(setup, tmp_path)
    first = precompute_teacher_outputs(**kwargs)
    cache_file = tmp_path / f"teacher-outputs-{first._fingerprint}.arrow"
    expected = column(first, "teacher_logits")
    del first
    _damage(cache_file, how)
    with teacher_batches(setup["teacher"]) as sizes, caplog.at_level("WARNING", logger="hf_msd"):
        again = precompute_teacher_outputs(**kwargs)
    assert f"Teacher-output cache file {cache_file} is damaged" in caplog.text
    assert sum(sizes) == 3 * len(setup["data"])  # computed again
    torch.testing.assert_close(column(again, "teacher_logits"), expected)  # the first, undamaged pass


def test_stale_temporary_files_of_a_killed_pass_are_removed(setup, tmp_path):
    stale, live = tmp_path / "tmpa1b2c3d4", tmp_path / "tmpz9y8x7w6"
    stale.write_bytes(b"half a file")
    live.write_bytes(b"being written")
    old = os.path.getmtime(stale) - 2 * 3600
    os.utime(stale, (old, old))
    precompute_teacher_outputs(**base_kwargs(setup, tmp_path))
    assert not stale.exists() and live.exists()  # a file written within the hour may belong to a live pass


def test_population_weighting_with_a_nan_in_a_cached_column_says_what_is_wrong(setup, tmp_path):
    cached = precompute_teacher_outputs(
        setup["teacher"], setup["data"], data_collator=setup["collator"], cache_dir=tmp_path / "cache"
    )
    logits = column(cached, "teacher_logits_text")
    logits[11, 1] = float("nan")  # in the saliency average, not in the first batches
    cached = cached.remove_columns("teacher_logits_text").add_column("teacher_logits_text", logits.tolist())
    with pytest.raises(
        FloatingPointError,
        match=r"population saliency \{'text': 0\.\d+, 'image': nan\} .*cached teacher_logits column",
    ):
        train(setup, tmp_path / "out", cached, "population")
