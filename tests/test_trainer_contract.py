"""DistillationTrainer and MSDTrainer as drop-in replacements of `transformers.Trainer`.

With every teacher-dependent weight at 0 (``kd_loss_weight=0``, ``hard_label_weight=1``) and a frozen copy
of the model as teacher, the trainers must give exactly what `Trainer` gives: the reference in every test
below is a plain `Trainer` run on an identical model, data and arguments.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel, Trainer, TrainingArguments
from transformers.modeling_outputs import ModelOutput

from hf_msd.trainers import DistillationTrainer, DistillationTrainingArguments, MSDTrainer
from tests.helpers.distillation import SEQ_LEN, VOCAB, tiny_bert


class RegressionConfig(PreTrainedConfig):
    """A config with transformers' defaults (``num_labels=2``), as in transformers' own Trainer tests."""

    model_type = "contract-regression"

    def __init__(self, a: float = 0.0, b: float = 0.0, output_style: str = "tuple", **kwargs):
        self.a, self.b, self.output_style = a, b, output_style
        super().__init__(**kwargs)


class RegressionModel(PreTrainedModel):
    """``y = a * x + b`` with its own MSE loss on float labels; returns ``(loss, y)`` tuples, a dict without
    ``logits`` (``output_style="dict"``) or two predictions (``"two"``: ``(loss, y, 2 * y)``)."""

    config_class = RegressionConfig
    base_model_prefix = "regression"

    def __init__(self, config: RegressionConfig):
        super().__init__(config)
        self.a = nn.Parameter(torch.tensor(float(config.a)))
        self.b = nn.Parameter(torch.tensor(float(config.b)))
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, input_x: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        y = input_x * self.a + self.b
        loss = None if labels is None else nn.functional.mse_loss(y, labels)
        if self.config.output_style == "dict":
            return ModelOutput(loss=loss, prediction=y) if loss is not None else ModelOutput(prediction=y)
        outputs = (y, 2 * y) if self.config.output_style == "two" else (y,)
        return outputs if loss is None else (loss, *outputs)


class RegressionDataset(torch.utils.data.Dataset):
    """``y = 2 x + 3 + noise``, fixed by ``seed``; the label column is named ``label_name``."""

    def __init__(self, length: int = 32, seed: int = 42, label_name: str = "labels"):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(length, generator=generator)
        self.y = 2.0 * self.x + 3.0 + 0.1 * torch.randn(length, generator=generator)
        self.label_name = label_name

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_x": self.x[index], self.label_name: self.y[index]}


ARGUMENTS = dict(
    use_cpu=True,
    report_to=[],
    per_device_train_batch_size=8,
    learning_rate=0.1,
    num_train_epochs=2,
    logging_steps=1,
    save_strategy="no",
    disable_tqdm=True,
    seed=0,
)
TERMS_OFF = dict(kd_loss_weight=0.0, hard_label_weight=1.0)


def terms_off(trainer_class) -> dict:
    """The arguments that switch every teacher-dependent term of ``trainer_class`` off."""
    return {**TERMS_OFF, "modality_loss_weight": 0.0} if trainer_class is MSDTrainer else TERMS_OFF


def run_both(tmp_path, model: PreTrainedModel, arguments: dict, trainer_kwargs: dict, trainer_class=None):
    """Train a `Trainer` and the swapped-in hf_msd trainer on copies of ``model``; returns both trainers."""
    trainer_class = trainer_class or DistillationTrainer
    # Built and trained one after the other: Trainer seeds the global RNG when it is built.
    reference = Trainer(
        model=copy.deepcopy(model),
        args=TrainingArguments(output_dir=str(tmp_path / "trainer"), **arguments),
        **trainer_kwargs,
    )
    reference.train()
    args_class = trainer_class.args_class
    ours = trainer_class(
        model=copy.deepcopy(model),
        teacher_model=copy.deepcopy(model),
        args=args_class(output_dir=str(tmp_path / "ours"), **arguments, **terms_off(trainer_class)),
        **trainer_kwargs,
    )
    ours.train()
    return reference, ours


def losses_of(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def assert_same_training(reference, ours) -> None:
    assert losses_of(ours) == pytest.approx(losses_of(reference), rel=1e-6, abs=1e-7)
    for (name, expected), actual in zip(reference.model.named_parameters(), ours.model.parameters()):
        torch.testing.assert_close(actual, expected, msg=name)


@pytest.mark.parametrize("trainer_class", [DistillationTrainer, MSDTrainer])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_regression_model_with_its_own_loss_trains_as_with_trainer(tmp_path, trainer_class, accumulation):
    # Float labels on a config with the default num_labels=2 used to be taken for multi-label and refused.
    model = RegressionModel(RegressionConfig())
    reference, ours = run_both(
        tmp_path,
        model,
        {**ARGUMENTS, "gradient_accumulation_steps": accumulation},
        {"train_dataset": RegressionDataset()},
        trainer_class,
    )
    assert_same_training(reference, ours)
    assert ours.model.a.item() != 0.0  # it trained


@pytest.mark.parametrize("output_style", ["tuple", "dict", "two"])
def test_evaluate_and_predict_match_trainer_for_tuples_dicts_and_several_outputs(tmp_path, output_style):
    model = RegressionModel(RegressionConfig(a=1.5, b=0.5, output_style=output_style))
    data = RegressionDataset(length=20, seed=7)
    arguments = {**ARGUMENTS, "per_device_eval_batch_size": 6}
    reference, ours = run_both(tmp_path, model, arguments, {"train_dataset": RegressionDataset()})
    assert ours.evaluate(data)["eval_loss"] == pytest.approx(reference.evaluate(data)["eval_loss"])
    expected, actual = reference.predict(data), ours.predict(data)
    if output_style == "two":
        assert isinstance(actual.predictions, tuple) and len(actual.predictions) == 2
        for want, got in zip(expected.predictions, actual.predictions):
            torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(want))
    else:
        torch.testing.assert_close(torch.as_tensor(actual.predictions), torch.as_tensor(expected.predictions))
    torch.testing.assert_close(torch.as_tensor(actual.label_ids), torch.as_tensor(expected.label_ids))


def test_compute_loss_func_is_used(tmp_path):
    def constant_loss(outputs, labels, num_items_in_batch=None):
        return (outputs[0] * 0).sum() + 42.0

    _, ours = run_both(
        tmp_path,
        RegressionModel(RegressionConfig()),
        {**ARGUMENTS, "num_train_epochs": 1},
        {"train_dataset": RegressionDataset(), "compute_loss_func": constant_loss},
    )
    assert losses_of(ours) == pytest.approx([42.0] * 4)


def test_label_smoothing_is_applied_as_by_trainer(tmp_path):
    model = tiny_bert(seed=0)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (16, SEQ_LEN), generator=generator)
    data = [{"input_ids": row, "labels": int(row[0] % 3)} for row in ids]
    arguments = {**ARGUMENTS, "label_smoothing_factor": 0.3, "num_train_epochs": 1}
    arguments["per_device_eval_batch_size"] = 16
    reference, ours = run_both(tmp_path, model, arguments, {"train_dataset": data})
    assert_same_training(reference, ours)
    # Evaluation applies the smoothing too: check it by hand on the trained student (one batch of 16).
    logits = ours.model.eval()(input_ids=ids).logits.detach()
    labels = torch.tensor([int(row[0] % 3) for row in ids])
    log_probs = logits.log_softmax(-1)
    smoothed = (0.7 * -log_probs.gather(1, labels[:, None]).squeeze(1) - 0.3 * log_probs.mean(-1)).mean()
    assert ours.evaluate(data)["eval_loss"] == pytest.approx(smoothed.item(), rel=1e-5)
    assert reference.evaluate(data)["eval_loss"] == pytest.approx(smoothed.item(), rel=1e-5)


def test_custom_label_names_reach_the_model_as_trainer_does(tmp_path):
    class TargetModel(RegressionModel):
        def forward(self, input_x, target=None, **kwargs):
            return super().forward(input_x, labels=target)

    arguments = {**ARGUMENTS, "label_names": ["target"]}
    reference, ours = run_both(
        tmp_path,
        TargetModel(RegressionConfig()),
        arguments,
        {"train_dataset": RegressionDataset(label_name="target")},
    )
    assert_same_training(reference, ours)


def test_callbacks_are_trainers_without_training_only_state(tmp_path):
    model = RegressionModel(RegressionConfig())
    reference = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "a"), **ARGUMENTS))
    ours = DistillationTrainer(
        model=copy.deepcopy(model),
        teacher_model=copy.deepcopy(model),
        args=DistillationTrainingArguments(output_dir=str(tmp_path / "b"), **ARGUMENTS, **TERMS_OFF),
    )

    def names(trainer):
        return [type(callback).__name__ for callback in trainer.callback_handler.callbacks]

    assert names(ours) == names(reference)


class ExplodingTeacher(RegressionModel):
    def forward(self, *args, **kwargs):
        raise AssertionError("the teacher ran although every teacher-dependent weight is 0")


def test_the_teacher_never_runs_when_its_terms_are_off(tmp_path):
    teacher = ExplodingTeacher(RegressionConfig())
    trainer = DistillationTrainer(
        model=RegressionModel(RegressionConfig()),
        teacher_model=teacher,
        args=DistillationTrainingArguments(output_dir=str(tmp_path), **ARGUMENTS, **TERMS_OFF),
        train_dataset=RegressionDataset(),
        eval_dataset=RegressionDataset(length=8, seed=1),
    )
    trainer.train()
    assert "eval_loss" in trainer.evaluate()


def test_args_none_and_plain_training_arguments_are_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = RegressionModel(RegressionConfig())
    default = DistillationTrainer(model=model, teacher_model=copy.deepcopy(model))
    assert isinstance(default.args, DistillationTrainingArguments)
    assert default.args.output_dir == "trainer_output"
    plain = TrainingArguments(output_dir=str(tmp_path / "plain"), learning_rate=0.123, seed=7, report_to=[])
    converted = DistillationTrainer(model=model, teacher_model=copy.deepcopy(model), args=plain).args
    assert (converted.learning_rate, converted.seed, converted.output_dir) == (0.123, 7, plain.output_dir)
    assert converted.kd_loss_weight == DistillationTrainingArguments(output_dir="x").kd_loss_weight


def test_a_model_whose_config_is_a_plain_object_is_accepted(tmp_path):
    class PlainConfig:
        problem_type = "regression"

    class PlainModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = PlainConfig()
            self.linear = nn.Linear(1, 1)

        def forward(self, input_x, labels=None):
            y = self.linear(input_x[:, None]).squeeze(-1)
            return (nn.functional.mse_loss(y, labels), y) if labels is not None else (y,)

    trainer = DistillationTrainer(
        model=PlainModel(),
        teacher_model=PlainModel(),
        args=DistillationTrainingArguments(output_dir=str(tmp_path), **ARGUMENTS, **TERMS_OFF),
        train_dataset=RegressionDataset(),
    )
    assert trainer.train().training_loss > 0
