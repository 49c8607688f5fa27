"""Distillation with unlabelled examples: the labelled subset of a split, the collator's ignore marker, and
the task term averaged over the LABELLED examples of the whole accumulated batch (KD terms over all
examples)."""

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value

from hf_msd.data import MultimodalDataCollator, keep_labels_on_subset, labelled_rows
from hf_msd.data.splits import num_labelled
from hf_msd.distillation.losses import labelled_mask, task_loss
from hf_msd.trainers import DistillationTrainer
from tests.helpers.distillation import make_args, teacher_and_student, token_dataset

# ---- The labelled subset of a split ------------------------------------------------------------------------


def _labelled_dataset(n=50):
    features = Features({"label": ClassLabel(names=["a", "b", "c"]), "x": Value("int64")})
    return Dataset.from_dict({"label": [i % 3 for i in range(n)], "x": list(range(n))}, features=features)


def _kept(dataset):
    return [x for x, label in zip(dataset["x"], dataset["label"]) if label is not None]


def test_labelled_subset_is_deterministic_nested_and_keeps_the_rest_unlabelled():
    dataset = _labelled_dataset()
    small = keep_labels_on_subset(dataset, fraction=0.1, seed=3)
    again = keep_labels_on_subset(_labelled_dataset(), fraction=0.1, seed=3)
    larger = keep_labels_on_subset(dataset, fraction=0.5, seed=3)
    other_seed = keep_labels_on_subset(dataset, fraction=0.1, seed=4)
    assert len(small) == len(dataset) == 50  # nobody is dropped
    assert len(_kept(small)) == 5 and _kept(small) == _kept(again)
    assert set(_kept(small)) < set(_kept(larger)) and len(_kept(larger)) == 25
    assert _kept(small) != _kept(other_seed)
    assert small.features["label"] == dataset.features["label"]  # ClassLabel names kept
    for x, label in zip(small["x"], small["label"]):  # kept labels are the original ones
        assert label is None or label == x % 3
    assert labelled_rows(small)["x"] == _kept(small)


@pytest.mark.parametrize(
    ("fraction", "max_samples", "expected"), [(None, None, 50), (0.1, None, 5), (0.1, 3, 3), (0.001, None, 1)]
)
def test_number_of_labelled_examples(fraction, max_samples, expected):
    assert num_labelled(50, fraction, max_samples) == expected


def test_bad_labelled_fraction_is_refused():
    with pytest.raises(ValueError, match="labeled_fraction must be in"):
        keep_labels_on_subset(_labelled_dataset(), fraction=1.5)
    with pytest.raises(ValueError, match="max_labeled_samples must be >= 1"):
        keep_labels_on_subset(_labelled_dataset(), max_samples=0)


# ---- The ignore marker: collator and labelled_mask ---------------------------------------------------------


class _TextOnlyProcessor:
    def __call__(self, text=None, **kwargs):
        return {"input_ids": torch.ones(len(text), 2, dtype=torch.long)}


def test_collator_marks_unlabelled_examples_single_and_multi_label():
    single = MultimodalDataCollator(_TextOnlyProcessor(), modalities=["text"])
    batch = single([{"question": "q", "label": 2}, {"question": "q", "label": None}])
    assert batch["labels"].tolist() == [2, -100]
    assert labelled_mask(batch["labels"], "single_label_classification").tolist() == [True, False]
    assert single([{"question": "q", "label": None}])["labels"].tolist() == [-100]

    multi = MultimodalDataCollator(_TextOnlyProcessor(), modalities=["text"], num_labels=3)
    batch = multi(
        [{"question": "q", "label": [0, 2]}, {"question": "q", "label": None}, {"question": "q", "label": []}]
    )
    assert batch["labels"].tolist() == [[1.0, 0.0, 1.0], [-100.0] * 3, [0.0] * 3]
    mask = labelled_mask(batch["labels"], "multi_label_classification")
    assert mask.tolist() == [True, False, True]  # [] is "no positive label", not "unlabelled"


def test_multi_label_dataset_with_unlabelled_rows_collates():
    features = Features({"label": List(ClassLabel(names=["a", "b", "c"])), "question": Value("string")})
    dataset = Dataset.from_dict(
        {"label": [[0], [1, 2], [2], [0, 1]], "question": ["q"] * 4}, features=features
    )
    subset = keep_labels_on_subset(dataset, max_samples=2, seed=0)
    batch = MultimodalDataCollator(_TextOnlyProcessor(), modalities=["text"], num_labels=3)(list(subset))
    assert labelled_mask(batch["labels"], "multi_label_classification").sum() == 2


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "regression"])
def test_task_loss_is_zero_without_gradient_on_unlabelled_rows(problem_type):
    logits = torch.randn(3, 4, requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [-100.0] * 4, [0.0, 1.0, 0.0, 0.0]])
    loss = task_loss(logits, labels, problem_type)
    assert loss[1] == 0 and loss[0] > 0 and loss[2] > 0
    loss.sum().backward()
    assert torch.all(logits.grad[1] == 0)


# ---- The task term over the labelled examples of the whole accumulated batch -------------------------------

#: Rows without a label in the 8-example batch: with micro-batches of 2 in order, micro-batch 1 (rows 2, 3)
#: has no labelled example at all.
UNLABELLED = [2, 3, 6]
HARD, KD, T, LR = 0.7, 0.3, 2.0, 0.5


def _dataset():
    dataset = token_dataset(8)
    labels = [-100 if i in UNLABELLED else y for i, y in enumerate(dataset["labels"])]
    return dataset.remove_columns("labels").add_column("labels", labels)


def _trained_student(tmp_path, batch_size, accumulation):
    teacher, student = teacher_and_student()
    args = make_args(
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        hard_label_weight=HARD,
        kd_loss_weight=KD,
        temperature=T,
        learning_rate=LR,
        train_sampling_strategy="sequential",
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=_dataset())
    trainer.train()
    return student


def _hand_computed_step():
    """One SGD step on the loss written out by hand: HARD * mean over the 5 labelled rows of -log p_y
    + KD * mean over all 8 rows of T^2 * KL(softmax(t/T) || softmax(s/T))."""
    teacher, student = teacher_and_student()
    rows = _dataset()[:]
    inputs = {k: torch.tensor(rows[k]) for k in ("input_ids", "attention_mask")}
    labels = torch.tensor(rows["labels"])
    labelled = labels != -100
    s = student(**inputs).logits
    with torch.no_grad():
        t = teacher(**inputs).logits
    p_s = torch.softmax(s, -1)
    nll = -torch.log(p_s[labelled.nonzero().squeeze(1), labels[labelled]])
    p_t, q = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    kl = T**2 * (p_t * (p_t.log() - q.log())).sum(-1)
    loss = HARD * nll.sum() / 5 + KD * kl.sum() / 8
    loss.backward()
    expected = {name: (p - LR * p.grad).detach() for name, p in student.named_parameters()}
    # What dividing the task term by ALL examples would give (the bug this guards against).
    student.zero_grad()
    s = student(**inputs).logits
    wrong = HARD * -torch.log(torch.softmax(s, -1)[labelled.nonzero().squeeze(1), labels[labelled]]).sum() / 8
    (wrong + KD * (T**2 * (p_t * (p_t.log() - torch.softmax(s / T, -1).log())).sum(-1)).sum() / 8).backward()
    wrong_step = {name: (p - LR * p.grad).detach() for name, p in student.named_parameters()}
    return expected, wrong_step


def test_task_term_is_averaged_over_labelled_examples_of_the_accumulated_batch(tmp_path):
    expected, wrong = _hand_computed_step()
    accumulated = dict(_trained_student(tmp_path / "ga", batch_size=2, accumulation=4).named_parameters())
    large = dict(_trained_student(tmp_path / "large", batch_size=8, accumulation=1).named_parameters())
    for name, want in expected.items():
        torch.testing.assert_close(accumulated[name].detach(), want, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(large[name].detach(), want, rtol=1e-5, atol=1e-6, msg=name)
    # The test can fail: the all-examples divisor moves the classifier measurably differently.
    gap = max((expected[k] - wrong[k]).abs().max().item() for k in expected)
    assert gap > 1e-3


def test_logged_task_loss_is_the_mean_over_labelled_examples(tmp_path):
    teacher, student = teacher_and_student()
    args = make_args(
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        logging_strategy="steps",
        logging_steps=1,
        hard_label_weight=1.0,
        kd_loss_weight=1.0,
        train_sampling_strategy="sequential",
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=_dataset())
    rows = _dataset()[:]
    inputs = {k: torch.tensor(rows[k]) for k in ("input_ids", "attention_mask")}
    labels = torch.tensor(rows["labels"])
    with torch.no_grad():
        task = task_loss(student(**inputs).logits, labels, "single_label_classification")
    trainer.train()
    log = next(entry for entry in trainer.state.log_history if "task_loss" in entry)
    assert log["task_loss"] == pytest.approx((task.sum() / 5).item(), rel=1e-4)
    assert log["loss"] == pytest.approx(log["task_loss"] + log["kd_loss"], rel=1e-4)
