"""Bring your own model: the registered architectures ViLT, VisualBERT, LXMERT, BridgeTower and hf_msd's
fusion model as teacher and as student in MSDTrainer, logits under other names, spec validation,
plain-module students."""

import math

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from hf_msd import architectures
from hf_msd.architectures import (
    ArchitectureAdapter,
    default_modalities,
    get_logits,
    num_labels,
    register_architecture,
)
from hf_msd.modalities.modality import Modality, model_inputs, restrict, validate_modalities
from hf_msd.trainers.msd_config import MSDTrainingArguments
from hf_msd.trainers.msd_trainer import MSDTrainer
from tests.helpers.byom import (
    ARCHITECTURES,
    InputRecorder,
    architecture_batch,
    expected_modality_inputs,
    tiny_architecture,
    train_recording_inputs,
)
from tests.helpers.models import tiny_batch, tiny_model


def msd_args(tmp_path, **overrides):
    fields = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 2,
        "max_steps": 2,
        "learning_rate": 1e-2,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "logging_steps": 1,
        "remove_unused_columns": False,
        "saliency_batch_size": 2,
    }
    fields.update(overrides)
    return MSDTrainingArguments(**fields)


def examples_of(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    size = batch["labels"].shape[0]
    return [{key: value[i] for key, value in batch.items()} for i in range(size)]


def stack(examples):
    return {key: torch.stack([example[key] for example in examples]) for key in examples[0]}


def assert_same_inputs(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_registered_modality_inputs_match_hand_built(name):
    model = tiny_architecture(name)
    batch = architecture_batch(name)
    modalities = default_modalities(model)
    assert [m.name for m in modalities] == ["text", "image"]
    validate_modalities(modalities, batch, model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    for keep, want in expected_modality_inputs(name, batch).items():
        got = restrict(inputs, modalities, keep=keep)
        assert_same_inputs(got, want)
        with torch.no_grad():
            logits = get_logits(model, model(**model_inputs(model, got)))
        assert logits.shape == (2, num_labels(model)) and torch.isfinite(logits).all()


@pytest.mark.parametrize("weighting", ["uniform", "population"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_msd_trainer_with_registered_teacher_and_student(tmp_path, name, weighting):
    teacher, student = tiny_architecture(name, seed=0), tiny_architecture(name, seed=1)
    batch = architecture_batch(name)
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        # Separate passes, so that every model receives x_text and x_image as inputs (with tower reuse,
        # hf_msd's models run them from the towers' outputs: tests/test_tower_reuse.py).
        args=msd_args(tmp_path, modality_weighting=weighting, tower_reuse=False),
        train_dataset=examples_of(batch),
        data_collator=stack,
    )
    assert [m.name for m in trainer.teacher_modalities] == ["text", "image"]
    before = [p.detach().clone() for p in student.parameters()]
    recorders = train_recording_inputs(trainer, teacher, student)
    full = {k: v for k, v in batch.items() if k != "labels"}
    for role, recorder in recorders.items():  # each model saw x, x_text and x_image as written by hand
        assert recorder.saw(full), role
        for keep, want in expected_modality_inputs(name, batch).items():
            assert recorder.saw(want), f"{role} never saw x_{keep}"
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"modality_text_loss", "modality_image_loss"} <= set(logs[0])
    assert all(math.isfinite(entry["loss"]) for entry in logs)
    assert any(not torch.equal(b, p) for b, p in zip(before, student.parameters()))
    if weighting == "population":
        assert trainer.weighting.has_population_saliency


def test_visual_bert_plain_mask_fails_with_advice_for_what_was_tried():
    # VisualBERT's VQA head gathers position attention_mask.sum(1) - 2: an all-zero text mask indexes -2.
    model = tiny_architecture("visual_bert")
    text = Modality(
        "text", keys=["input_ids", "attention_mask"], optional_keys=["token_type_ids"], removal="mask"
    )
    image = default_modalities(model)[1]
    with pytest.raises(ValueError) as error:
        validate_modalities([text, image], architecture_batch("visual_bert"), model)
    message = str(error.value)
    assert "removal='mask' already tried" in message and "'mask_keep_special'" in message
    assert "try removal='fill' or removal='mask_keep_special'" in message
    assert "try removal='mask'" not in message


def test_validation_blames_a_broken_model_not_the_removal():
    class Broken(nn.Module):
        def forward(self, input_ids=None, pixel_values=None):
            raise RuntimeError("shape mismatch in layer 3")

    batch = tiny_batch()
    with pytest.raises(ValueError, match=r"Broken fails on the full batch, before any modality is removed"):
        validate_modalities(default_modalities(tiny_model()), batch, Broken())


def test_validation_follows_kwargs_wrappers():
    class Wrapper(nn.Module):  # the usual 18-line wrapper's shape: forward(*args, **kwargs)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    vilt = tiny_architecture("vilt")
    wrapper = Wrapper(vilt)
    batch = architecture_batch("vilt")
    assert sorted(model_inputs(wrapper, batch)) == sorted(k for k in batch if k != "labels")
    modalities = default_modalities(vilt)
    validate_modalities(modalities, batch, wrapper)
    drop_text = Modality("text", keys=["input_ids", "attention_mask"], optional_keys=["token_type_ids"])
    with pytest.raises(
        ValueError, match=r"key 'input_ids'.*removal='drop' already tried: try removal='mask'"
    ):
        validate_modalities([drop_text, modalities[1]], batch, wrapper)


def test_logits_under_another_name():
    lxmert = tiny_architecture("lxmert")
    batch = architecture_batch("lxmert")
    with torch.no_grad():
        outputs = lxmert(**model_inputs(lxmert, batch))
    assert not hasattr(outputs, "logits")
    assert get_logits(lxmert, outputs) is outputs.question_answering_score
    assert num_labels(lxmert) == 3 and lxmert.config.num_labels == 2

    class Scores(nn.Module):  # a user's model: not registered, its logits named "scores"
        logits_key = "scores"

        def forward(self, x):
            return {"scores": x * 2}

    x = torch.randn(2, 3)
    torch.testing.assert_close(get_logits(Scores(), Scores()(x)), x * 2)
    with pytest.raises(ValueError, match=r"no 'logits'.*logits_key"):
        get_logits(tiny_model(), SequenceClassifierOutput(loss=torch.zeros(())).__class__())


def test_registered_architecture_reads_logits_and_modalities(monkeypatch):
    # a copy of the registry, restored afterwards: the architecture registered here stays in this test
    monkeypatch.setattr(architectures, "ARCHITECTURES", dict(architectures.ARCHITECTURES))

    class Config:
        model_type = "byom_test_scores"

    class ScoresModel(nn.Module):
        config = Config()

        def forward(self, input_ids=None, pixel_values=None):
            return {"answer_scores": torch.ones(input_ids.shape[0], 3)}

    spec = [Modality("text", keys=["input_ids"]), Modality("image", keys=["pixel_values"])]
    register_architecture(
        ArchitectureAdapter("byom_test_scores", lambda config: spec, logits_key="answer_scores")
    )
    model = ScoresModel()
    assert default_modalities(model) == spec
    assert torch.equal(get_logits(model, model(input_ids=torch.zeros(2, 4))), torch.ones(2, 3))
    with pytest.raises(ValueError, match="exist_ok"):
        register_architecture(ArchitectureAdapter("byom_test_scores", lambda config: spec))


class PlainStudent(nn.Module):
    """A student with no `.config` that returns bare logits: mean-pooled token embeddings + mean pixels."""

    def __init__(self, vocab_size: int = 40, num_labels: int = 3):
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(vocab_size, 8)
        self.text_head = nn.Linear(8, num_labels)
        self.image_head = nn.Linear(3, num_labels)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None):
        logits = 0
        if input_ids is not None:
            logits = logits + self.text_head(self.embed(input_ids).mean(dim=1))
        if pixel_values is not None:
            logits = logits + self.image_head(pixel_values.mean(dim=(2, 3)))
        return logits


def test_plain_module_student_trains_with_the_teachers_spec(tmp_path):
    teacher, student = tiny_model(seed=0), PlainStudent()
    batch = tiny_batch(teacher.config, labels="single_label_classification")
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=msd_args(tmp_path, modality_weighting="population"),
        train_dataset=examples_of(batch),
        data_collator=stack,
    )
    recorder = InputRecorder(student, batch_size=4)
    try:
        trainer.train()
    finally:
        recorder.remove()
    text = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    for want in (text, {"pixel_values": batch["pixel_values"]}):  # "drop", the teacher's spec
        assert recorder.saw({k: v[:2] for k, v in want.items()})
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_plain_module_student_with_a_config_only_option_names_what_is_needed(tmp_path):
    with pytest.raises(ValueError, match=r"PlainStudent has no `.config`.*hidden_loss_weight > 0"):
        MSDTrainer(
            model=PlainStudent(),
            teacher_model=tiny_model(),
            args=msd_args(tmp_path, hidden_loss_weight=1.0),
            train_dataset=examples_of(tiny_batch(labels="single_label_classification")),
            data_collator=stack,
        )


def test_plain_module_student_with_other_labels_fails_clearly(tmp_path):
    batch = tiny_batch(labels="single_label_classification")
    trainer = MSDTrainer(
        model=PlainStudent(num_labels=5),
        teacher_model=tiny_model(),
        args=msd_args(tmp_path),
        train_dataset=examples_of(batch),
        data_collator=stack,
    )
    with pytest.raises(ValueError, match=r"Student logits \(2, 5\) and teacher logits \(2, 3\)"):
        trainer.train()
