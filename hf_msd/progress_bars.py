"""Progress bars that say what they count: a ``Trainer``'s training and prediction bars labelled with a
stage (``teacher``, ``student``, ``teacher test (text)``...) instead of a bare ``0/1``."""

from __future__ import annotations

from tqdm.auto import tqdm
from transformers import ProgressCallback, Trainer
from transformers.trainer_utils import has_length


class LabelledProgressCallback(ProgressCallback):
    """``ProgressCallback`` whose training bar shows ``label`` and whose prediction bar shows ``label`` too
    (``"<label> evaluation"`` while training, when the bar counts an evaluation inside the run)."""

    def __init__(self, label: str, max_str_len: int = 100):
        super().__init__(max_str_len=max_str_len)
        self.label = label

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # as ProgressCallback, with the label from the first line drawn
            self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True, desc=self.label)
        self.current_step = 0

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if state.is_world_process_zero and has_length(eval_dataloader) and self.prediction_bar is None:
            during_training = self.training_bar is not None
            self.prediction_bar = tqdm(
                total=len(eval_dataloader),
                leave=not during_training,
                dynamic_ncols=True,
                desc=f"{self.label} evaluation" if during_training else self.label,
            )
        super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)


def label_progress_bars(trainer: Trainer, label: str) -> Trainer:
    """Give ``trainer``'s console progress bars the description ``label`` (nothing changes when its bars are
    off, ``disable_tqdm``, or drawn by a notebook callback); returns ``trainer``."""
    if any(type(callback) is ProgressCallback for callback in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LabelledProgressCallback(label))
    return trainer
