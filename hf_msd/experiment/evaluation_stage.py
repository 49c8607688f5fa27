"""Stage 4, evaluation: the teacher's and the student's metrics on the test split with both modalities and
each modality alone (easy-VQA: also per question type), then their batched inference speed side by side."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate import PartialState
from transformers import PreTrainedModel

from ..architectures import default_modalities
from ..data import easy_vqa_question_types
from ..evaluation.robustness import evaluate_by_modality
from ..evaluation.speed import compare_inference_speed
from ..metrics import make_compute_metrics
from ..targets import resolve_problem_type
from .progress import announce
from .run import Run, base_training_args, label_names, make_collator


def evaluate_models(
    run: Run, models: Mapping[str, PreTrainedModel], processor
) -> dict[str, dict[str, dict[str, float]]]:
    """Stage 4: each model's metrics on the test split, with both modalities and each one alone."""
    results = {}
    for name, model in models.items():
        announce(
            "evaluation", f"{name} on {len(run.dataset['test'])} test examples, with each modality alone too"
        )
        args = base_training_args(
            run.training_args, output_dir=str(Path(run.training_args.output_dir) / "evaluation")
        )
        results[name] = evaluate_by_modality(
            model,
            run.dataset["test"],
            make_collator(run, model, processor),
            default_modalities(model),
            args,
            make_compute_metrics(resolve_problem_type(model.config), label_groups=_label_groups(run)),
            label=f"{name} test",
        )
    return results


def _label_groups(run: Run) -> dict[str, list[int]] | None:
    """easy-VQA's question types as groups of label ids (accuracy per type); None for other data."""
    if run.data_args.dataset_name != "easy_vqa":
        return None
    names = label_names(run.dataset)
    return {kind: [names.index(a) for a in answers] for kind, answers in easy_vqa_question_types().items()}


def measure_speed(run: Run, models: Mapping[str, PreTrainedModel], processor) -> dict[str, Any] | None:
    """Stage 5: batched inference speed of the models side by side on the first test examples
    (:func:`hf_msd.evaluation.speed.compare_inference_speed`: ``speed_batches`` batches of
    ``per_device_eval_batch_size``, ``speed_rounds`` interleaved rounds after a warm-up), on the main
    process only; the first model is the reference of the speed-up. With ``speed_compile`` each model is
    timed compiled too. None when ``speed_rounds`` is 0."""
    if run.exp_args.speed_rounds == 0:
        return None
    state = PartialState()
    result = None
    if state.is_main_process:
        size = run.training_args.per_device_eval_batch_size
        test = run.dataset["test"]
        count = min(len(test), size * run.exp_args.speed_batches)
        examples = [test[i] for i in range(count)]
        device = run.training_args.device
        batches = {}
        for name, model in models.items():
            collator = make_collator(run, model, processor)
            batches[name] = [
                {k: v.to(device) for k, v in collator(examples[i : i + size]).items() if k != "labels"}
                for i in range(0, count, size)
            ]
            model.to(device)
        result = compare_inference_speed(
            models, batches, rounds=run.exp_args.speed_rounds, compile_options=_compile_options(run)
        )
    state.wait_for_everyone()
    return result


def _compile_options(run: Run) -> dict[str, str] | None:
    """``torch.compile`` keywords of the compiled speed rows (``speed_compile``), None without them."""
    if not run.exp_args.speed_compile:
        return None
    args = run.training_args
    names = {"backend": args.torch_compile_backend, "mode": args.torch_compile_mode}
    return {key: value for key, value in names.items() if value}
