"""DeepSpeed ZeRO-3 on 2 CPU processes distils a vision-language pair (tiny LLaVA) like one process.

For KD (``DistillationTrainer``) and MSD (``MSDTrainer`` on the collator's views), the LLaVA teacher being
DeepSpeed's inference engine partitioned like the student: the loss of every step equals the loss of one
process taking the same steps on the combined batch, and the student saved by ``save_model`` (gathered from
the partitions) reloads with ``from_pretrained`` to the 1-process student's weights and generates the same
tokens. Marked ``deepspeed``: it needs the ``deepspeed`` package and runs in ``.ci/run``'s ``-m deepspeed``
call.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from hf_msd.data import VisionLanguageCollator
from tests.helpers.launch import REPO_ROOT, SCRIPTS, deepspeed_launch
from tests.helpers.scripts.deepspeed_script import losses
from tests.helpers.scripts.deepspeed_vlm_script import CASES, PER_DEVICE_BATCH, STEPS, train
from tests.helpers.vlm import raw_examples, teacher_and_student

SCRIPT = str(SCRIPTS / "deepspeed_vlm_script.py")
TIMEOUT = 600
pytestmark = pytest.mark.deepspeed


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, torch_extensions_dir):
    """Runs every case of the script under ZeRO-3; returns its output directory."""
    out_dir = tmp_path_factory.mktemp("zero3_vlm")
    command, env = deepspeed_launch(SCRIPT, 3, str(out_dir), extensions_dir=torch_extensions_dir)
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"launch failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return out_dir


def _generate(model, processor) -> list[list[int]]:
    """Greedy answers (up to 3 new tokens) of ``model`` to 4 image questions: the new token ids per row."""
    inputs = VisionLanguageCollator(processor).generation_inputs(raw_examples(4))
    with torch.no_grad():
        output = model.eval().generate(**inputs, max_new_tokens=3, do_sample=False)
    return output[:, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("case", CASES)
def test_zero3_vision_language_pair_matches_one_process(zero3_run, tmp_path, case):
    record = json.loads((zero3_run / case / "losses.json").read_text())
    assert record["zero_stage"] == 3
    reference = train(str(tmp_path / case), case, 2 * PER_DEVICE_BATCH)
    assert reference.args.world_size == 1 and not reference.is_deepspeed_enabled
    want_losses = losses(reference)
    assert len(want_losses) == STEPS and len(record["losses"]) == STEPS
    torch.testing.assert_close(torch.tensor(record["losses"]), torch.tensor(want_losses), rtol=0, atol=1e-5)

    # The saved student (gathered from the partitions) reloads to the 1-process student, which moved.
    student = reference.model
    directory = zero3_run / case / "student"
    reloaded = LlavaForConditionalGeneration.from_pretrained(directory)
    want, got = student.state_dict(), reloaded.state_dict()
    assert set(got) == set(want)
    for name, value in got.items():
        torch.testing.assert_close(value, want[name], rtol=0, atol=1e-5, msg=name)
    initial = teacher_and_student()[1].state_dict()
    assert max((got[k] - initial[k]).abs().max().item() for k in got) > 1e-2

    processor = LlavaProcessor.from_pretrained(directory)
    generated = _generate(reloaded, processor)
    assert len(generated) == 4 and all(len(row) >= 1 for row in generated)
    assert generated == _generate(student, processor)
