"""Bad input fails before training with an error naming the field (or the row and column) and the fix."""

import pytest
import torch
from datasets import Dataset, Features, Image, Value

from hf_msd.data import MultimodalDataCollator, validate_examples
from hf_msd.experiment.arguments import parse_arguments
from hf_msd.trainers import DistillationTrainer
from tests.helpers.distillation import make_args, teacher_and_student, token_dataset
from tests.helpers.models import (
    TINY_WORDS,
    hand_truncated_ids,
    tiny_batch,
    tiny_images,
    tiny_model,
    tiny_processor,
)


def image_dataset(tmp_path, labels=(0, 1, 2, 0), questions=None, break_image=None):
    """Rows of (image file, question, label); ``break_image`` "missing" / "truncated" spoils row 1's file."""
    paths = []
    for i, image in enumerate(tiny_images(len(labels))):
        image.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    if break_image == "missing":
        paths[1] = str(tmp_path / "gone.png")
    elif break_image == "truncated":
        data = (tmp_path / "1.png").read_bytes()
        (tmp_path / "1.png").write_bytes(data[: len(data) // 2])
    questions = questions or ["what color is the shape?"] * len(labels)
    features = Features({"image": Image(), "question": Value("string"), "label": Value("int64")})
    return Dataset.from_dict(
        {"image": paths, "question": questions, "label": list(labels)}, features=features
    )


def test_bad_rows_are_listed_with_row_column_and_file(tmp_path):
    dataset = image_dataset(
        tmp_path, labels=(0, 1, 7, 0), questions=["a?", "b?", "c?", "  "], break_image="truncated"
    )
    with pytest.raises(ValueError) as error:
        validate_examples(
            dataset,
            text_column="question",
            image_column="image",
            label_column="label",
            num_labels=3,
            name="train",
        )
    message = str(error.value)
    assert "train has 3 bad example(s)" in message
    assert "row 3, column 'question': empty or missing text ('  ')" in message
    assert f"row 1, column 'image': unreadable image {tmp_path / '1.png'}" in message
    assert "row 2, column 'label': label 7 outside the label set [0, 3)" in message
    (tmp_path / "m").mkdir()
    missing = image_dataset(tmp_path / "m", break_image="missing")
    with pytest.raises(ValueError, match=r"row 1, column 'image': image file not found: .*gone\.png"):
        validate_examples(missing, image_column="image")


def multimodal_trainer(tmp_path, dataset, **kwargs):
    teacher, student = tiny_model(seed=0), tiny_model(seed=1)
    collator = MultimodalDataCollator.from_model(student, tiny_processor(tmp_path / "processor"))
    args = make_args(tmp_path / "out", max_steps=2, remove_unused_columns=False, **kwargs)
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=dataset, data_collator=collator
    )


def test_trainer_refuses_a_label_outside_the_label_set_before_training(tmp_path):
    trainer = multimodal_trainer(tmp_path, image_dataset(tmp_path, labels=(0, 1, 2, 5)))
    with pytest.raises(
        ValueError, match=r"(?s)train_dataset has 1 bad .*row 3, column 'label': label 5 outside"
    ):
        trainer.train()
    assert trainer.state.global_step == 0


def test_empty_training_set_and_raw_images_without_a_collator_are_refused(tmp_path):
    teacher, student = teacher_and_student()
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path),
        train_dataset=token_dataset().select([]),
    )
    with pytest.raises(ValueError, match="train_dataset is empty"):
        trainer.train()
    raw = DistillationTrainer(
        model=tiny_model(seed=1),
        teacher_model=tiny_model(seed=0),
        args=make_args(tmp_path, max_steps=1),
        train_dataset=image_dataset(tmp_path),
    )
    with pytest.raises(
        ValueError, match=r"raw image column\(s\) \['image'\].*MultimodalDataCollator.from_model"
    ):
        raw.train()


def test_multi_label_model_with_class_id_labels_is_refused(tmp_path):
    kind = "multi_label_classification"
    teacher, student = tiny_model(problem_type=kind, seed=0), tiny_model(problem_type=kind, seed=1)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path))
    batch = tiny_batch(labels="single_label_classification")
    with pytest.raises(ValueError, match=r"multi-label .* one class id per example"):
        trainer.compute_loss(student, batch)
    collator = MultimodalDataCollator.from_model(student, tiny_processor(tmp_path / "processor"))
    with pytest.raises(
        ValueError, match="row 0, column 'label': label 0 is one class id, but the model is multi-label"
    ):
        collator.validate(image_dataset(tmp_path), name="train_dataset")


def test_layer_map_out_of_range_names_the_field(tmp_path):
    teacher, student = teacher_and_student()  # student 1 layer (hidden_states 0..1), teacher 2 layers
    args = make_args(tmp_path, hidden_loss_weight=1.0, hidden_layer_map={1: 3})
    with pytest.raises(
        ValueError, match=r"hidden_layer_map=\{1: 3\}: teacher index \[3\] is out of range.*0\.\.2"
    ):
        DistillationTrainer(model=student, teacher_model=teacher, args=args)


def test_peft_model_passed_as_its_own_teacher_distils_from_its_base(tmp_path):
    from peft import LoraConfig, get_peft_model

    _, base = teacher_and_student()
    student = get_peft_model(
        base, LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False)
    )
    args = make_args(tmp_path, max_steps=1, hard_label_weight=0.0, kd_loss_weight=1.0)
    trainer = DistillationTrainer(
        model=student, teacher_model=student, args=args, train_dataset=token_dataset(8)
    )
    assert trainer.teacher_model is base
    trainer.train()
    assert trainer.state.global_step == 1


def test_teacher_on_the_meta_device_is_refused(tmp_path):
    teacher, student = teacher_and_student()
    teacher.to("meta")
    with pytest.raises(ValueError, match="teacher_model has weights on the meta device"):
        DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path))


def test_yaml_null_leaves_an_optional_field_unset_and_a_list_for_a_scalar_names_the_key(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"output_dir: {tmp_path}\nmax_train_samples: null\nreport_to: none\n")
    _, data_args, _, _ = parse_arguments([str(config)])
    assert data_args.max_train_samples is None
    config.write_text(f"output_dir: {tmp_path}\nlearning_rate: [0.1, 0.2]\n")
    with pytest.raises(ValueError, match=r"learning_rate takes one value .* got the list \[0\.1, 0\.2\]"):
        parse_arguments([str(config)])


def test_lora_seq_cls_wraps_the_fused_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = tiny_model(seed=1)
    batch = tiny_batch(labels="single_label_classification")
    peft_model = get_peft_model(
        model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
    )
    outputs = peft_model(**batch)
    assert outputs.logits.shape == (4, 3) and torch.isfinite(outputs.loss)
    with pytest.raises(ValueError, match="inputs_embeds is not supported"):
        model(inputs_embeds=torch.zeros(1, 2, 24))


def test_integer_like_and_string_labels_of_a_list_of_dicts_are_range_checked_naming_the_row(tmp_path):
    import numpy as np

    rows = image_dataset(tmp_path).to_list()
    for row, label in zip(rows, (np.int64(1), np.int64(5), torch.tensor(7), "red")):
        row["label"] = label
    with pytest.raises(ValueError) as error:
        validate_examples(
            rows, text_column="question", image_column="image", label_column="label", num_labels=3
        )
    message = str(error.value)
    assert "row 1, column 'label': label 5 outside the label set [0, 3)" in message
    assert "row 2, column 'label': label 7 outside the label set [0, 3)" in message
    assert "row 3, column 'label': label 'red' is a string, not a class id" in message
    assert "row 0" not in message


def test_a_question_longer_than_the_model_takes_is_cut_to_its_positions(tmp_path):
    # tiny_tokenizer() has no model_max_length (transformers reports a ~1e30 placeholder), so only the
    # model's max_position_embeddings can bound the text.
    model, processor = tiny_model(), tiny_processor(tmp_path)
    assert processor.tokenizer.model_max_length > 10**20
    positions = model.config.text_config.max_position_embeddings
    words = [TINY_WORDS[i] for i in torch.randint(0, len(TINY_WORDS), (10_000,)).tolist()]
    image = tiny_images(1)[0]
    collator = MultimodalDataCollator.from_model(model, processor)
    examples = [
        {"question": " ".join(words), "image": image, "label": 1},
        {"question": "what color is the shape?", "image": image, "label": 0},
    ]
    batch = collator(examples)
    assert batch["input_ids"].shape == (2, positions)
    output = model(**batch)
    output.loss.backward()  # a training step's forward and backward
    # Reference: the question cut by hand to max_position_embeddings tokens ([CLS] + words + [SEP]).
    pixel_values = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    ids = hand_truncated_ids(words, positions)
    with torch.no_grad():
        reference = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            token_type_ids=torch.zeros_like(ids),
            pixel_values=pixel_values,
        ).logits
    torch.testing.assert_close(output.logits[:1].detach(), reference)
    with pytest.raises(ValueError, match=rf"max_length=100 is more than the {positions} text positions"):
        MultimodalDataCollator.from_model(model, processor, max_length=100)
