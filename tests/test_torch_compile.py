"""``torch_compile=True`` with the trainers: the same losses as eager, one graph per input signature (MSD's
modality-only passes and a short last batch do not recompile), the teacher-output cache and resuming."""

import os

import datasets
import pytest
import torch
import torch._dynamo.utils
from transformers import TrainerCallback

from hf_msd import precompute_teacher_outputs
from hf_msd.architectures import default_modalities
from hf_msd.trainers import DistillationTrainer, MSDTrainer, MSDTrainingArguments
from hf_msd.trainers.compilation import RECOMPILE_LIMIT
from tests.helpers.models import tiny_model
from tests.helpers.msd import stack_collate, text_label_dataset

STEPS = 6  # 44 examples at batch 8: the 6th step has a batch of 4
#: Layers of the tiny models: compiling is most of these tests' time, and it grows with the layers traced.
LAYERS = 1


@pytest.fixture(autouse=True)
def clean_compile_state():
    """TrainingArguments(torch_compile=True) sets accelerate's dynamo environment variables for the whole
    process; leave neither them nor dynamo's caches to later tests."""
    torch._dynamo.reset()
    yield
    for name in ("ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_DYNAMO_MODE"):
        os.environ.pop(name, None)
    torch._dynamo.reset()


def _data(cached: bool):
    rows = text_label_dataset(44, seed=0)
    if not cached:
        return rows
    dataset = datasets.Dataset.from_list([{k: v.tolist() for k, v in row.items()} for row in rows])
    dataset = dataset.with_format("torch")
    return precompute_teacher_outputs(
        tiny_model(seed=0, layers=LAYERS), dataset, data_collator=stack_collate, cache_dir=None
    )


class StopAt(TrainerCallback):
    """Interrupts training after ``step`` (after its checkpoint is saved), as a killed job would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _train(
    tmp_path, compiled: bool, trainer_class=MSDTrainer, cached=False, resume=None, stop_at=None, **options
):
    student = tiny_model(seed=1, layers=LAYERS).train()
    args = MSDTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=STEPS,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="steps",
        save_steps=3,
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
        seed=0,
        torch_compile=compiled,
        torch_compile_backend="aot_eager" if compiled else None,  # dynamo + autograd, without C++ codegen
        **options,
    )
    trainer = trainer_class(
        model=student,
        teacher_model=tiny_model(seed=0, layers=LAYERS),
        args=args,
        modalities=default_modalities(student),
        train_dataset=_data(cached),
        data_collator=stack_collate,
        callbacks=[StopAt(stop_at)] if stop_at else None,
    )
    trainer.train(resume_from_checkpoint=resume)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return trainer, losses


@pytest.mark.parametrize(
    ("trainer_class", "weighting", "cached", "graphs"),
    [
        (DistillationTrainer, None, False, 2),  # the student and the (compiled) teacher on x
        (MSDTrainer, "uniform", False, 6),  # both on x, x_text and x_image
        # Cached teacher outputs: the student's three only. The meta step (second-order gradients, which
        # compiled graphs lack) runs on the uncompiled student. Population weights: the resume test below.
        (MSDTrainer, "learned", True, 3),
    ],
)
def test_compiled_training_equals_eager_with_one_graph_per_signature(
    tmp_path, trainer_class, weighting, cached, graphs
):
    options = {"modality_weighting": weighting} if weighting else {}
    if weighting == "learned":  # a meta step at steps 0, 2 and 4 on a held-out fifth of the data
        options.update(meta_validation_fraction=0.2, meta_update_interval=2)
    _, eager = _train(tmp_path / "eager", False, trainer_class, cached, **options)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    trainer, compiled = _train(tmp_path / "compiled", True, trainer_class, cached, **options)
    assert type(trainer.model_wrapped).__name__ == "OptimizedModule"
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-5)
    # One graph per input signature, none added by the short last batch or the single-example input check.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_compiled_msd_resumes_from_a_checkpoint_like_an_uninterrupted_run(tmp_path):
    options = {"modality_weighting": "population", "cached": True}
    whole, _ = _train(tmp_path / "whole", False, **options)  # eager: compiled training equals it (above)
    _train(tmp_path / "cut", True, stop_at=3, **options)  # stops after saving checkpoint-3
    # dynamo's cache is kept: the resumed run reuses the graphs (a new process would compile them again).
    resumed, _ = _train(tmp_path / "cut", True, resume=str(tmp_path / "cut" / "checkpoint-3"), **options)
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
