"""The workflow's machine and DDP settings: CPU without pinned memory when no accelerator is present, and
DDP's unused-parameter search only where a batch can leave a tower unused."""

import pytest
import torch
from transformers import TrainingArguments

from hf_msd.experiment.runtime import find_unused_parameters, for_this_machine
from hf_msd.models import make_student
from tests.helpers.models import tiny_batch, tiny_model

NO_ACCELERATOR = not torch.accelerator.is_available()


@pytest.mark.skipif(not NO_ACCELERATOR, reason="checks the settings of a machine without accelerator")
def test_no_accelerator_means_cpu_without_pinned_memory(tmp_path, recwarn):
    args = for_this_machine(TrainingArguments(str(tmp_path), report_to="none"))
    assert args.use_cpu and not args.dataloader_pin_memory
    loader = torch.utils.data.DataLoader(list(range(4)), pin_memory=args.dataloader_pin_memory)
    list(loader)
    assert not [w for w in recwarn if "pin_memory" in str(w.message)]


@pytest.mark.deepspeed
def test_deepspeed_runs_keep_use_cpu_off(tmp_path):
    # DeepSpeed's CPU back end needs use_cpu=False: kept, only the pinned memory goes. Building these
    # arguments needs the deepspeed package and registers a global DeepSpeed config: unset it afterwards.
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    deepspeed = {"zero_optimization": {"stage": 2}}
    try:
        args = for_this_machine(TrainingArguments(str(tmp_path), deepspeed=deepspeed))
        assert not args.use_cpu and not args.dataloader_pin_memory
    finally:
        unset_hf_deepspeed_config()


def _unused(model: torch.nn.Module, batch: dict) -> list[str]:
    """The trainable parameters that get no gradient from one forward and backward pass on ``batch``."""
    model.zero_grad()
    model(**batch).logits.sum().backward()
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("modalities", [("text", "image"), ("text",), ("image",)])
def test_full_batches_use_every_parameter_so_ddp_need_not_search(modalities):
    teacher = tiny_model()
    for model in (teacher, make_student(teacher, modalities=list(modalities))):
        assert _unused(model, tiny_batch(model.config)) == []
    assert find_unused_parameters(TrainingArguments("out")) is False


def test_a_batch_without_a_modality_leaves_its_tower_unused():
    teacher = tiny_model()
    unused = _unused(teacher, tiny_batch(teacher.config, modalities=("text",)))
    image_tower = [name for name, _ in teacher.named_parameters() if ".image_encoder." in name]
    assert image_tower and set(image_tower) <= set(unused)
    assert not [name for name in unused if ".text_encoder." in name]
    assert find_unused_parameters(TrainingArguments("out"), batches_may_lack_a_modality=True) is True
    # The user's own value wins.
    assert find_unused_parameters(TrainingArguments("out", ddp_find_unused_parameters=True)) is True
