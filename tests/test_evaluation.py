"""Tests for hf_msd.evaluation.robustness: scores per input condition against a hand computation with the
model."""

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import TrainingArguments

from hf_msd.architectures import default_modalities
from hf_msd.data import MultimodalDataCollator
from hf_msd.evaluation.robustness import RestrictedCollator, evaluate_by_modality, input_conditions
from hf_msd.metrics import make_compute_metrics
from hf_msd.models import make_student
from tests.helpers.models import tiny_images, tiny_model, tiny_processor, tiny_vilt

# 10 examples with batch size 4: the last batch is short and every batch pads its text differently.
QUESTIONS = [
    "what color is the shape?",
    "is there a red circle?",
    "does the image contain a triangle?",
    "what shape is in the image?",
    "is there not a blue rectangle in the image?",
    "what color?",
    "is a green shape present?",
    "does the image not contain a yellow circle?",
    "what is the shape?",
    "is there a teal triangle in the image?",
]
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny multimodal model (initializer_range 0.5 so its predictions vary across examples and
    conditions), its processor and the raw images."""
    model = tiny_model(num_labels=3, seed=0, initializer_range=0.5)
    processor = tiny_processor(tmp_path_factory.mktemp("processor"))
    images = tiny_images(len(QUESTIONS), seed=1)
    return model, processor, images


def _reference_logits(model, processor, images) -> dict[str, torch.Tensor]:
    """The model's logits (N, C) on all examples at once with both inputs, only the text keys and only
    the pixels, computed by hand from the processor's outputs."""
    encoded = processor(images=images, text=QUESTIONS, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        return {
            "both": model(**encoded).logits,
            "text": model(**{key: encoded[key] for key in TEXT_KEYS}).logits,
            "image": model(pixel_values=encoded["pixel_values"]).logits,
        }


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).double().mean().item()


def _dataset(images, labels: torch.Tensor) -> Dataset:
    return Dataset.from_dict({"image": images, "question": QUESTIONS, "label": labels.tolist()})


def _evaluate(model, images, labels: torch.Tensor, collator, tmp_path, conditions=None) -> dict:
    """`evaluate_by_modality` on the QUESTIONS data set with `labels`, batch size 4, on CPU."""
    return evaluate_by_modality(
        model,
        _dataset(images, labels),
        collator,
        default_modalities(model),
        TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_eval_batch_size=4),
        make_compute_metrics("single_label_classification"),
        conditions=conditions,
    )


def test_accuracy_per_condition_matches_hand_computation(setup, tmp_path):
    model, processor, images = setup
    reference = _reference_logits(model, processor, images)
    labels = reference["both"].argmax(-1)  # the model's own answers: "both" scores 1.0
    expected = {condition: _accuracy(logits, labels) for condition, logits in reference.items()}
    # The conditions must be told apart, or a mix-up of the restricted batches would go unnoticed.
    assert expected["both"] == 1.0 and len(set(expected.values())) == 3, expected

    results = _evaluate(model, images, labels, MultimodalDataCollator(processor), tmp_path)

    assert list(results) == ["both", "text", "image"]
    for condition, accuracy in expected.items():
        assert results[condition]["accuracy"] == pytest.approx(accuracy), condition
        assert results[condition]["loss"] == pytest.approx(
            F.cross_entropy(reference[condition], labels).item(), rel=1e-4
        ), condition
        assert not any(key.startswith("test_") or key.endswith("_runtime") for key in results[condition])


def test_text_only_model_is_scored_on_both_and_text_only(setup, tmp_path):
    teacher, processor, images = setup
    student = make_student(teacher, modalities=["text"]).eval()
    encoded = processor(text=QUESTIONS, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        logits = student(**{key: encoded[key] for key in TEXT_KEYS}).logits
    # Labels: the student's answers on the first 7 examples, a different class on the last 3 -> 0.7.
    labels = logits.argmax(-1)
    labels[7:] = (labels[7:] + 1) % 3

    assert input_conditions(student, default_modalities(student)) == ["both", "text"]
    collator = MultimodalDataCollator.from_model(student, processor)  # text only: never reads images
    results = _evaluate(student, images, labels, collator, tmp_path)

    assert list(results) == ["both", "text"]
    assert results["both"]["accuracy"] == pytest.approx(_accuracy(logits, labels)) == pytest.approx(0.7)
    assert results["text"]["accuracy"] == pytest.approx(0.7)


def test_input_conditions_of_a_model_without_config_modalities_are_every_modality():
    vilt = tiny_vilt()
    assert input_conditions(vilt, default_modalities(vilt)) == ["both", "text", "image"]


def test_explicit_conditions_are_scored_in_the_given_order(setup, tmp_path):
    model, processor, images = setup
    reference = _reference_logits(model, processor, images)
    labels = reference["both"].argmax(-1)
    results = _evaluate(model, images, labels, MultimodalDataCollator(processor), tmp_path, ["image"])
    assert list(results) == ["image"]
    assert results["image"]["accuracy"] == pytest.approx(_accuracy(reference["image"], labels))


@pytest.mark.parametrize(
    ("modalities", "conditions", "unknown"),
    [(("text", "image"), ["both", "audio"], "audio"), (("text",), ["both", "image"], "image")],
)
def test_unknown_condition_raises_naming_it(setup, tmp_path, modalities, conditions, unknown):
    teacher, _, images = setup
    model = teacher if len(modalities) == 2 else make_student(teacher, modalities=list(modalities))

    def collator(examples):
        raise AssertionError("the conditions must be checked before any batch is collated")

    with pytest.raises(ValueError, match=f"'{unknown}'"):
        _evaluate(model, images, torch.zeros(10, dtype=torch.long), collator, tmp_path, conditions)


def test_restricted_collator_keeps_only_the_chosen_modality(setup):
    model, processor, images = setup
    examples = [{"image": image, "question": q, "label": 1} for image, q in zip(images[:3], QUESTIONS)]
    collator = MultimodalDataCollator(processor)
    full = dict(collator(examples))
    modalities = default_modalities(model)

    unchanged = RestrictedCollator(collator, modalities, keep=None)(examples)
    text = RestrictedCollator(collator, modalities, keep="text")(examples)
    image = RestrictedCollator(collator, modalities, keep="image")(examples)

    assert sorted(unchanged) == sorted(full) == sorted([*TEXT_KEYS, "pixel_values", "labels"])
    assert sorted(text) == sorted([*TEXT_KEYS, "labels"])
    assert sorted(image) == ["labels", "pixel_values"]
    for batch in (unchanged, text, image):
        for key, value in batch.items():
            assert torch.equal(value, full[key]), key
