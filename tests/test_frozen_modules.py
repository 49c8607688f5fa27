"""Frozen modules do not change while a student trains: a LoRA student with a ResNet image tower (BatchNorm)
saves an adapter that reloads to the trained model, and trainable BatchNorm layers still update."""

import dataclasses

import pytest
import torch
from test_conv_towers import RESNET, resnet_model

from hf_msd.models import MultimodalTransformerForSequenceClassification
from hf_msd.trainers import DistillationTrainer, MSDTrainer, MSDTrainingArguments
from hf_msd.trainers.frozen_modules import keep_frozen_normalization_in_eval
from tests.helpers.distillation import make_args
from tests.helpers.models import tiny_config, tiny_model
from tests.helpers.msd import stack_collate, text_label_dataset


def _running_stats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def _train(student, tmp_path, trainer_class):
    args = make_args(tmp_path / "run", max_steps=3, learning_rate=0.05, per_device_train_batch_size=4)
    if trainer_class is MSDTrainer:
        fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
        args = MSDTrainingArguments(**fields)
    trainer = trainer_class(
        model=student,
        teacher_model=tiny_model(seed=0),
        args=args,
        train_dataset=text_label_dataset(12),
        data_collator=stack_collate,
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("trainer_class", [DistillationTrainer, MSDTrainer])
def test_lora_adapter_reloads_to_the_trained_resnet_student(tmp_path, trainer_class):
    from peft import LoraConfig, PeftModel, get_peft_model

    initial_stats = _running_stats(resnet_model(seed=1))
    assert len(initial_stats) > 4  # the tower has BatchNorm layers
    student = get_peft_model(
        resnet_model(seed=1), LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
    )
    trainer = _train(student, tmp_path, trainer_class)
    trainer.save_model(str(tmp_path / "adapter"))

    reloaded = PeftModel.from_pretrained(resnet_model(seed=1), str(tmp_path / "adapter")).eval()
    batch = stack_collate(text_label_dataset(6, seed=5))
    del batch["labels"]
    student.eval()
    with torch.no_grad():
        trained, again = student(**batch).logits, reloaded(**batch).logits
    torch.testing.assert_close(again, trained, rtol=0, atol=1e-6)
    # The frozen tower's statistics are those of the untrained model (a fresh build, not the trainer's view).
    after = {k.removeprefix("base_model.model."): v for k, v in _running_stats(student).items()}
    assert after.keys() == initial_stats.keys()
    for name, value in initial_stats.items():
        assert torch.equal(after[name], value), name


def test_trainable_batch_norm_still_updates(tmp_path):
    student = resnet_model(seed=1)
    before = _running_stats(student)
    _train(student, tmp_path, DistillationTrainer)
    after = _running_stats(student)
    means = [k for k in before if k.endswith("running_mean")]
    assert any(not torch.equal(before[k], after[k]) for k in means)


def test_batch_norm_without_parameters_follows_its_frozen_parent():
    torch.manual_seed(0)
    model = MultimodalTransformerForSequenceClassification(tiny_config(vision_config=dict(RESNET)))
    tower = model.multimodal_transformer.image_encoder
    tower.requires_grad_(False)
    norm = torch.nn.BatchNorm2d(4, affine=False)
    tower.add_module("extra_norm", norm)
    model.train()
    keep_frozen_normalization_in_eval(model)
    norms = [m for m in tower.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norm in norms and not any(m.training for m in norms)
    assert model.classifier.training and model.training  # the rest still trains
    model.eval()
    model.train()
    assert all(m.training for m in norms)  # train() undoes it: the trainers call it per batch


def test_freezing_or_unfreezing_between_steps_is_followed():
    """The frozen layers are looked up again when a parameter's requires_grad changes between calls, or a
    module is added."""
    model = resnet_model().train()
    tower = model.multimodal_transformer.image_encoder
    norms = [m for m in tower.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    keep_frozen_normalization_in_eval(model)
    assert all(norm.training for norm in norms)  # everything trains
    tower.requires_grad_(False)
    model.train()
    keep_frozen_normalization_in_eval(model)
    assert not any(norm.training for norm in norms)
    tower.requires_grad_(True)
    model.train()
    keep_frozen_normalization_in_eval(model)
    assert all(norm.training for norm in norms)
    tower.requires_grad_(False)
    model.train()
    keep_frozen_normalization_in_eval(model)
    extra = torch.nn.BatchNorm2d(4, affine=False)  # no parameters: the flags stay those of the last call
    tower.add_module("extra_norm", extra)
    model.train()
    keep_frozen_normalization_in_eval(model)
    assert not extra.training and not any(norm.training for norm in norms)
