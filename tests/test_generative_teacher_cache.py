"""Cached teacher outputs of a generative (LLaVA) teacher: one row per answer token, on ``x`` and each view.

With every token of the vocabulary stored (``top_k`` = vocabulary size) the loss equals the loss with the
teacher run online; with a smaller ``top_k`` the teacher's distribution at an answer token is the top k of
``softmax(t)`` and the rest of the mass spread uniformly, checked against that distribution written out by
hand. With the cache the teacher does not run.
"""

from __future__ import annotations

import datasets
import pytest
import torch
from test_generative_vlm import X, forward, hand_kd_sum, processor_and_models

from hf_msd.data import VisionLanguageCollator
from hf_msd.data.generative import view_inputs
from hf_msd.teacher_outputs.cache import precompute_teacher_outputs
from hf_msd.trainers import DistillationTrainer, MSDTrainer
from tests.helpers.vlm import (
    idefics3_processor_and_models,
    msd_args,
    processor,
    raw_examples,
    teacher_and_student,
)


def examples():
    return raw_examples(4, unlabelled=(1, 2))


def count_teacher_calls(teacher):
    calls = []
    teacher.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def cached_batch(tmp_path, teacher, collator, top_k):
    dataset = precompute_teacher_outputs(
        teacher,
        datasets.Dataset.from_list(examples()),
        data_collator=collator,
        top_k=top_k,
        cache_dir=tmp_path / "cache",
    )
    assert {"teacher_logits__topk_logits", "teacher_logits_text__topk_indices"} <= set(dataset.column_names)
    assert len(dataset[0]["teacher_logits__topk_logits"]) == 2  # answer "circle </s>": 2 rows
    return collator([dataset[i] for i in range(len(dataset))])


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("weighting", ["uniform", "instance"])
def test_cache_with_the_whole_vocabulary_gives_the_online_loss_without_running_the_teacher(
    tmp_path, weighting, family
):
    proc, teacher, student = processor_and_models(family)
    collator = VisionLanguageCollator(proc)
    vocab = teacher.config.text_config.vocab_size
    batch = cached_batch(tmp_path, teacher, collator, top_k=vocab)
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=msd_args(tmp_path / "out", modality_weighting=weighting),
        data_collator=collator,
    )
    student.eval()
    calls = count_teacher_calls(teacher)
    online = trainer.compute_loss(student, dict(collator(examples())))
    assert len(calls) == 3  # x, x_text, x_image
    cached = trainer.compute_loss(student, dict(batch))
    assert len(calls) == 3  # the teacher did not run
    assert cached.item() == pytest.approx(online.item(), rel=1e-5)


def hand_topk_log_probs(logits, k):
    """log q per position: q = softmax(t) on its top k, (1 - their sum) / (V - k) on every other token."""
    p = torch.softmax(logits.double(), dim=-1)
    top = p.topk(k, dim=-1)
    rest = (1 - top.values.sum(-1, keepdim=True)) / (p.shape[-1] - k)
    q = rest.expand_as(p).clone()
    q.scatter_(-1, top.indices, top.values)
    return q.log().float()


def test_cache_with_top_k_distils_the_expanded_distribution(tmp_path):
    teacher, student = teacher_and_student()
    collator = VisionLanguageCollator(processor())
    batch = cached_batch(tmp_path, teacher, collator, top_k=3)
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=msd_args(tmp_path / "out", modality_weighting="uniform"),
        data_collator=collator,
    )
    student.eval()
    calls = count_teacher_calls(teacher)
    loss = trainer.compute_loss(student, dict(batch))
    assert not calls

    online = collator(examples())
    dl, labels = online["distillation_labels"], online["labels"]
    s_full = forward(student, online)
    logits, targets = s_full[:, :-1], labels[:, 1:]
    task = torch.nn.functional.cross_entropy(logits[targets != X], targets[targets != X])
    tokens = (dl[:, 1:] != X).sum()
    teacher_q = hand_topk_log_probs(forward(teacher, online), 3)
    expected = 0.3 * task + 0.7 * hand_kd_sum(s_full, teacher_q, dl, 2.0).sum() / tokens
    for name in ("image", "text"):
        view = view_inputs(online, name)
        teacher_view = hand_topk_log_probs(forward(teacher, view), 3)
        per_example = hand_kd_sum(forward(student, view), teacher_view, view["distillation_labels"], 2.0)
        expected = expected + 0.5 * per_example.sum() / tokens
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_distillation_trainer_reads_the_cache_and_refuses_other_answers(tmp_path):
    teacher, student = teacher_and_student()
    collator = VisionLanguageCollator(processor(), views=False)
    batch = cached_batch(tmp_path, teacher, VisionLanguageCollator(processor()), top_k=5)
    batch = {k: v for k, v in batch.items() if not k.startswith("view_")}
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=msd_args(tmp_path / "out"), data_collator=collator
    )
    student.eval()
    calls = count_teacher_calls(teacher)
    trainer.compute_loss(student, dict(batch))
    assert not calls
    batch["distillation_labels"] = batch["distillation_labels"].clone()
    batch["distillation_labels"][0, 13] = 9  # one answer token more in row 0 than the cache holds
    with pytest.raises(
        ValueError,
        match="'teacher_logits' holds \\[2, 2, 2, 2\\] answer tokens per example, the batch's answers \\[3, ",
    ):
        trainer.compute_loss(student, dict(batch))


def test_idefics3_cache_gives_the_online_loss(tmp_path):
    """Another image-text-to-text family (Idefics3: pixel_values per image and a pixel_attention_mask): the
    collator's views and the cache work the same way."""
    proc, teacher, student = idefics3_processor_and_models()
    collator = VisionLanguageCollator(proc)
    online_batch = collator(examples())
    assert online_batch["pixel_attention_mask"].shape == (4, 1, 32, 32)
    assert "pixel_values" not in view_inputs(online_batch, "text")
    vocab = teacher.config.text_config.vocab_size
    batch = cached_batch(tmp_path, teacher, collator, top_k=vocab)
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=msd_args(tmp_path / "out", modality_weighting="instance"),
        data_collator=collator,
    )
    assert trainer.generative
    student.eval()
    calls = count_teacher_calls(teacher)
    online = trainer.compute_loss(student, dict(online_batch))
    assert len(calls) == 3
    assert trainer.compute_loss(student, dict(batch)).item() == pytest.approx(online.item(), rel=1e-5)
    assert len(calls) == 3
