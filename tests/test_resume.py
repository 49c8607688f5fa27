"""Resume after a crash: a run SIGKILLed while saving a checkpoint resumes (``resume_from_checkpoint=True``)
from the newest complete checkpoint and ends with the same student and training-only state (projections,
learned weights) as a run that was never interrupted."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

import pytest
import torch

from hf_msd.trainers import MSDTrainer
from hf_msd.trainers.training_state import TRAINING_STATE_NAME, TrainingState, resolve_checkpoint
from tests.helpers.launch import REPO_ROOT, SCRIPTS, script_env
from tests.helpers.models import tiny_model
from tests.helpers.msd import oracle_teacher, stack_collate, text_label_dataset
from tests.helpers.scripts.resume_script import KILL_AT_STEP, MAX_STEPS, build_trainer
from tests.test_msd_trainer import args_for

SCRIPT = str(SCRIPTS / "resume_script.py")


def final_state(trainer):
    state = {f"student.{k}": v for k, v in trainer.model.state_dict().items()}
    for name, part in trainer.training_state.parts.items():
        if isinstance(part, torch.nn.Module):
            state.update({f"{name}.{k}": v for k, v in part.state_dict().items() if torch.is_tensor(v)})
    return {k: v.detach().clone() for k, v in state.items()}


def test_sigkilled_run_resumes_from_the_last_complete_checkpoint_to_the_uninterrupted_result(
    tmp_path, caplog
):
    output_dir = tmp_path / "killed"
    # The same number of threads as this process, so float sums (hence the weights) are bit-comparable.
    env = script_env(OMP_NUM_THREADS=str(torch.get_num_threads()))
    killed = subprocess.run(
        [sys.executable, SCRIPT, str(output_dir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, f"{killed.returncode}\n{killed.stderr[-4000:]}"
    half_written = output_dir / f"checkpoint-{KILL_AT_STEP}"
    assert (half_written / "trainer_state.json").is_file()  # the Trainer's part was written...
    assert not (half_written / TRAINING_STATE_NAME).exists()  # ...but the kill came before ours

    resumed = build_trainer(str(output_dir))
    with caplog.at_level(logging.WARNING):
        resumed.train(resume_from_checkpoint=True)
    assert f"Skipping the incomplete checkpoint {half_written}" in caplog.text
    assert resumed.modules.restored_from == str(output_dir / "checkpoint-2")
    assert resumed.state.global_step == MAX_STEPS
    assert resumed._meta_batches.draws == MAX_STEPS  # the held-out stream continued, not restarted

    uninterrupted = build_trainer(str(tmp_path / "uninterrupted"))
    uninterrupted.train()
    want, got = final_state(uninterrupted), final_state(resumed)
    assert got.keys() == want.keys()
    assert {"training_modules.hidden_projections.1_to_1.weight", "modality_weighting.alpha"} <= want.keys()
    assert want["modality_weighting.alpha"].abs().max() > 1e-2
    for name in want:
        torch.testing.assert_close(
            got[name], want[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_resume_true_without_a_checkpoint_raises_like_trainer(tmp_path):
    trainer = MSDTrainer(
        model=tiny_model(seed=1),
        teacher_model=oracle_teacher(),
        args=args_for(tmp_path, max_steps=1),
        train_dataset=text_label_dataset(8),
        data_collator=stack_collate,
    )
    with pytest.raises(ValueError, match="No valid checkpoint found in output directory"):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 0


def _checkpoints(output_dir, trainer_states: dict[int, str]) -> None:
    for step, text in trainer_states.items():
        (output_dir / f"checkpoint-{step}").mkdir(parents=True)
        (output_dir / f"checkpoint-{step}" / "trainer_state.json").write_text(text)


def test_a_checkpoint_whose_trainer_state_does_not_load_is_skipped(tmp_path, caplog):
    # Plain KD: no training-only state, so trainer_state.json alone decides; transformers writes it in place.
    _checkpoints(tmp_path, {2: '{"global_step": 2}', 4: '{"global_step": 4}', 6: "", 8: '{"global_st'})
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint(True, str(tmp_path), TrainingState()) == str(tmp_path / "checkpoint-4")
    assert (
        f"incomplete checkpoint {tmp_path / 'checkpoint-8'} (its trainer_state.json is missing or"
        in caplog.text
    )


def test_resuming_learned_weights_from_checkpoints_without_them_says_so(tmp_path):
    _checkpoints(tmp_path, {2: '{"global_step": 2}', 4: '{"global_step": 4}'})  # e.g. a uniform run's
    state = TrainingState()
    state.register("modality_weighting", torch.nn.Linear(2, 2))
    with pytest.raises(
        ValueError,
        match=r"No checkpoint in .* holds the training-only state this run needs "
        r"\(modality_weighting, e\.g\. learned modality weights\)",
    ):
        resolve_checkpoint(True, str(tmp_path), state)
