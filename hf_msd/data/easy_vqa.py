"""easy-VQA (https://github.com/vzhou842/easy-VQA) as a `datasets.DatasetDict`.

The data ships in the `easy-vqa` PyPI package (`pip install hf_msd[vision]`): 64x64 PNG images of one
coloured shape, questions about them, and 13 one-word answers. The package's test split is kept untouched;
a validation split is carved from train by image id, so no image appears in both train and validation.
"""

from __future__ import annotations

from collections.abc import Mapping

from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from .splits import carve_validation, limit_splits


def _easy_vqa_package():
    try:
        import easy_vqa
    except ImportError as error:
        raise ImportError(
            "easy-VQA needs the `easy-vqa` package: `pip install easy-vqa` (or `pip install hf_msd[vision]`)."
        ) from error
    return easy_vqa


def easy_vqa_answers() -> list[str]:
    """The 13 easy-VQA answers, in the package's order (= the `label` ClassLabel ids)."""
    return _easy_vqa_package().get_answers()


def easy_vqa_question_types() -> dict[str, list[str]]:
    """easy-VQA's question types by their answers: ``{"yes/no": [...], "shape": [...], "color": [...]}``.

    Every easy-VQA question is about whether a shape or colour is present (answered yes/no), which shape
    the image holds, or which colour it has, so the gold answer names the question's type."""
    shapes = ["circle", "rectangle", "triangle"]
    answers = easy_vqa_answers()
    return {
        "yes/no": ["yes", "no"],
        "shape": shapes,
        "color": [a for a in answers if a not in shapes and a not in ("yes", "no")],
    }


def _build_split(
    questions: tuple[list, list, list], image_paths: dict[int, str], features: Features
) -> Dataset:
    texts, answers, image_ids = questions
    return Dataset.from_dict(
        {
            "image": [image_paths[image_id] for image_id in image_ids],
            "question": texts,
            "label": answers,
            "image_id": image_ids,
        },
        features=features,
    )


def load_easy_vqa(
    validation_fraction: float = 0.1,
    seed: int = 0,
    max_samples: int | Mapping[str, int | None] | None = None,
) -> DatasetDict:
    """Load easy-VQA as a `DatasetDict` with splits "train", "validation" and "test".

    Columns: `image` (`datasets.Image`, stored as a file path and decoded lazily to a 64x64 RGB PIL image),
    `question` (str), `label` (`ClassLabel` over `easy_vqa_answers()`), `image_id` (int, unique per split).

    Args:
        validation_fraction: fraction of the train *images* (with all their questions) moved to
            "validation". The choice depends only on the image ids and `seed`, so it is identical across
            runs and machines.
        seed: seed of the validation choice and of `max_samples`.
        max_samples: keep only this many rows per split (an int for every split, or a mapping split ->
            int), chosen deterministically from `seed`; for quick runs.
    """
    package = _easy_vqa_package()
    features = Features(
        {
            "image": Image(),
            "question": Value("string"),
            "label": ClassLabel(names=package.get_answers()),
            "image_id": Value("int64"),
        }
    )
    train = _build_split(package.get_train_questions(), package.get_train_image_paths(), features)
    test = _build_split(package.get_test_questions(), package.get_test_image_paths(), features)
    dataset = carve_validation(
        DatasetDict({"train": train, "test": test}), validation_fraction, group_column="image_id", seed=seed
    )
    return limit_splits(dataset, max_samples, seed=seed)
