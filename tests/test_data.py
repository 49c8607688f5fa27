"""Tests for hf_msd.data: easy-VQA, local loaders (and every validation error), the collator."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import easy_vqa
import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, List
from datasets import Image as ImageFeature
from PIL import Image

from hf_msd.data import (
    DataValidationError,
    MultimodalDataCollator,
    easy_vqa_answers,
    load_easy_vqa,
    load_local_dataset,
    select_subset,
)
from tests.helpers.data import IMAGE_SIZE, TinyProcessor, write_png

EASY_VQA_DIR = Path(easy_vqa.__file__).parent / "data"


def _columns(dataset, *names):
    """Plain lists of `names` from `dataset` in one Arrow read (no image decoding)."""
    data = dataset.select_columns(list(names))[:]
    return [data[name] for name in names]


def _questions(split):
    """(question, answer, image_id) triples read straight from the package's JSON file."""
    return [tuple(q) for q in json.loads((EASY_VQA_DIR / split / "questions.json").read_text())]


@pytest.fixture(scope="module")
def easy():
    return load_easy_vqa(validation_fraction=0.1, seed=0)


# ----------------------------------------------------------------------------------------------- easy-VQA


def test_easy_vqa_schema_and_sizes(easy):
    answers = (EASY_VQA_DIR / "answers.txt").read_text().split()
    assert list(easy) == ["train", "validation", "test"]
    assert len(easy["train"]) + len(easy["validation"]) == 38_575
    assert len(easy["test"]) == 9_673
    for split in easy.values():
        assert isinstance(split.features["label"], ClassLabel)
        assert split.features["label"].names == answers == easy_vqa_answers()
        assert split.features["label"].num_classes == 13
        assert set(split.column_names) == {"image", "question", "label", "image_id"}
    image = easy["validation"][0]["image"]
    assert image.size == (64, 64)


def test_easy_vqa_rows_match_package_files(easy):
    names = easy["train"].features["label"].names
    rows = [
        (q, names[label], image_id)
        for split in ("train", "validation")
        for q, label, image_id in zip(*_columns(easy[split], "question", "label", "image_id"))
    ]
    assert sorted(rows) == sorted(_questions("train"))
    test_columns = _columns(easy["test"], "question", "label", "image_id")
    test_rows = [(q, names[label], image_id) for q, label, image_id in zip(*test_columns)]
    assert test_rows == _questions("test")  # the package's test split, untouched and in order
    # the image column stores the path of the row's image, decoded lazily
    row = easy["test"].cast_column("image", ImageFeature(decode=False))[5]
    assert row["image"]["path"] == str(EASY_VQA_DIR / "test" / "images" / f"{test_columns[2][5]}.png")


def test_easy_vqa_validation_split_by_image_without_leakage(easy):
    train_ids = set(*_columns(easy["train"], "image_id"))
    validation_ids = set(*_columns(easy["validation"], "image_id"))
    assert not train_ids & validation_ids
    assert len(train_ids | validation_ids) == 4000
    # reference: the 400 image ids (10% of 4000) with the smallest sha256("0:<id>") are held out
    ranked = sorted(range(4000), key=lambda i: hashlib.sha256(f"0:{i}".encode()).hexdigest())
    assert validation_ids == set(ranked[:400])


def test_easy_vqa_is_deterministic_and_seeded(easy):
    again = load_easy_vqa(validation_fraction=0.1, seed=0)
    columns = ("question", "image_id")
    assert _columns(again["validation"], *columns) == _columns(easy["validation"], *columns)
    (other_ids,) = _columns(load_easy_vqa(validation_fraction=0.2, seed=1)["validation"], "image_id")
    assert len(set(other_ids)) == 800
    assert set(other_ids) != set(*_columns(easy["validation"], "image_id"))


def test_easy_vqa_max_samples_and_subsets(easy):
    small = load_easy_vqa(max_samples={"train": 50, "test": 20})
    sizes = {name: len(split) for name, split in small.items()}
    assert sizes == {"train": 50, "validation": len(easy["validation"]), "test": 20}
    assert _columns(small["train"], "question") == _columns(
        load_easy_vqa(max_samples=50)["train"], "question"
    )
    small_rows = set(zip(*_columns(small["test"], "question", "image_id")))
    assert len(small_rows) == 20 and small_rows <= set(zip(*_columns(easy["test"], "question", "image_id")))
    with pytest.raises(ValueError, match="unknown splits"):
        load_easy_vqa(max_samples={"dev": 5})
    # select_subset: the rows with the smallest sha256("<seed>:<index>"), kept in original order
    numbers = Dataset.from_dict({"n": list(range(100, 200))})
    ranked = sorted(range(100), key=lambda i: hashlib.sha256(f"3:{i}".encode()).hexdigest())
    assert select_subset(numbers, 10, seed=3)["n"] == [100 + i for i in sorted(ranked[:10])]
    assert select_subset(numbers, 500) is numbers


# ----------------------------------------------------------------------------------------------- local files


def _write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header), *(",".join(r) for r in rows)]) + "\n")
    return path


def test_csv_loader(tmp_path):
    write_png(tmp_path / "img" / "a.png", color=(255, 0, 0))
    write_png(tmp_path / "img" / "b.png", color=(0, 0, 255), size=(5, 7))
    csv_path = _write_csv(
        tmp_path / "train.csv",
        ["path", "caption", "category", "extra"],
        [["img/a.png", "a red cat", "cat", "x"], ["img/b.png", "a blue dog", "dog", "y"]],
    )
    ds = load_local_dataset(csv_path, image_column="path", text_column="caption", label_column="category")
    train = ds["train"]
    assert list(ds) == ["train"]
    assert train.column_names == ["image", "text", "label"]
    assert train.features["label"].names == ["cat", "dog"]
    assert train["text"] == ["a red cat", "a blue dog"]
    assert train["label"] == [0, 1]
    assert train[1]["image"].size == (5, 7)
    assert np.asarray(train[0]["image"])[0, 0].tolist() == [255, 0, 0]
    # explicit label order sets the class ids
    ds = load_local_dataset(
        csv_path,
        image_column="path",
        text_column="caption",
        label_column="category",
        label_names=["dog", "cat"],
    )
    assert ds["train"]["label"] == [1, 0]


def test_jsonl_loader_splits_base_dir_and_missing_modalities(tmp_path):
    write_png(tmp_path / "images" / "1.png")
    write_png(tmp_path / "images" / "2.png")
    data = tmp_path / "meta"
    data.mkdir()
    (data / "train.jsonl").write_text(
        json.dumps({"image": "1.png", "text": "what is it", "label": 3})
        + "\n\n"
        + json.dumps({"image": "2.png", "text": "a dog", "label": "7"})
        + "\n"
    )
    (data / "test.jsonl").write_text(json.dumps({"image": "2.png", "text": "a cat", "label": 7}) + "\n")
    files = {"train": data / "train.jsonl", "test": str(data / "test.jsonl")}
    ds = load_local_dataset(files, base_dir=tmp_path / "images")
    assert list(ds) == ["train", "test"]
    assert ds["train"].features["label"].names == ["3", "7"]
    assert ds["train"]["label"] == [0, 1] and ds["test"]["label"] == [1]
    assert ds["test"][0]["image"].size == (8, 8)
    text_only = load_local_dataset(files, image_column=None, label_column=None)
    assert text_only["train"].column_names == ["text"]
    image_only = load_local_dataset(files, text_column=None, base_dir=tmp_path / "images")
    assert image_only["train"].column_names == ["image", "label"]


def test_image_folder_loader(tmp_path):
    for split, label, name in [
        ("train", "cat", "1"),
        ("train", "dog", "2"),
        ("train", "dog", "3"),
        ("test", "cat", "4"),
    ]:
        write_png(tmp_path / "root" / split / label / f"{name}.png")
    (tmp_path / "root" / "train" / "dog" / "notes.txt").write_text("not an image")
    ds = load_local_dataset(tmp_path / "root")
    assert list(ds) == ["train", "test"]
    assert ds["train"].column_names == ["image", "label"]
    assert ds["train"].features["label"].names == ["cat", "dog"]
    assert ds["train"]["label"] == [0, 1, 1] and ds["test"]["label"] == [0]
    assert ds["train"][2]["image"].size == (8, 8)
    single = load_local_dataset(tmp_path / "root" / "train")  # class dirs directly: one "train" split
    assert list(single) == ["train"] and len(single["train"]) == 3


def test_multi_label_csv_and_jsonl(tmp_path):
    write_png(tmp_path / "a.png")
    csv_path = _write_csv(
        tmp_path / "d.csv", ["image", "text", "label"], [["a.png", "t1", "b|a"], ["a.png", "t2", ""]]
    )
    ds = load_local_dataset(csv_path, multi_label=True, label_names=["a", "b", "c"])
    assert ds["train"].features["label"] == List(ClassLabel(names=["a", "b", "c"]))
    assert ds["train"]["label"] == [[1, 0], []]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"image": "a.png", "text": "t", "label": ["c", "a"]}) + "\n")
    ds = load_local_dataset(jsonl, multi_label=True)
    assert ds["train"].features["label"].feature.names == ["a", "c"]
    assert ds["train"]["label"] == [[1, 0]]


# ------------------------------------------------------------------------------------------ validation errors


def _problems(*args, **kwargs):
    with pytest.raises(DataValidationError) as info:
        load_local_dataset(*args, **kwargs)
    return info.value.problems, str(info.value)


def test_errors_missing_and_unreadable_images_and_unknown_labels(tmp_path):
    write_png(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    csv_path = _write_csv(
        tmp_path / "d.csv",
        ["image", "text", "label"],
        [
            ["ok.png", "fine", "cat"],
            ["missing.png", "t", "cat"],
            ["broken.png", "t", "cat"],
            ["ok.png", "t", "cow"],
        ],
    )
    problems, message = _problems(csv_path, label_names=["cat", "dog"])
    assert len(problems) == 3 and "Found 3 problem(s)" in message
    by_row = {p.split(", column")[0]: p for p in problems}
    missing = by_row[f"{csv_path}, row 2 (line 3)"]
    assert "column 'image'" in missing and "not found" in missing and "missing.png" in missing
    unreadable = by_row[f"{csv_path}, row 3 (line 4)"]
    assert "column 'image'" in unreadable and "unreadable image" in unreadable
    label = by_row[f"{csv_path}, row 4 (line 5)"]
    assert "column 'label'" in label and "'cow'" in label and "label_names" in label


def test_errors_missing_column_and_bad_rows(tmp_path):
    write_png(tmp_path / "ok.png")
    csv_path = _write_csv(tmp_path / "d.csv", ["image", "caption", "label"], [["ok.png", "t", "cat"]])
    problems, _ = _problems(csv_path)
    assert len(problems) == 1 and "column 'text'" in problems[0] and "column not found" in problems[0]
    assert "text_column=" in problems[0]
    (tmp_path / "cells.csv").write_text("image,text,label\nok.png,a, b,cat\n")
    problems, _ = _problems(tmp_path / "cells.csv")
    assert len(problems) == 1 and problems[0].startswith(
        f"{tmp_path / 'cells.csv'}, row 1 (line 2): more cells"
    )

    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        "\n".join(
            [
                json.dumps({"image": "ok.png", "text": "t", "label": "cat"}),
                "{not json",
                json.dumps({"image": "ok.png", "text": 5, "label": "cat"}),
                json.dumps({"image": "ok.png", "text": "t", "label": ["cat", "dog"]}),
                json.dumps({"image": None, "text": "t", "label": "cat"}),
            ]
        )
    )
    problems, _ = _problems(jsonl, label_names=["cat", "dog"])
    assert len(problems) == 4
    assert problems[0].startswith(f"{jsonl}, row 2 (line 2): invalid JSON")
    text = next(p for p in problems if "column 'text'" in p)
    assert text.startswith(f"{jsonl}, row 3 (line 3)") and "expected a string" in text
    multi = next(p for p in problems if "column 'label'" in p)
    assert multi.startswith(f"{jsonl}, row 4 (line 4)") and "multi_label=True" in multi
    no_image = next(p for p in problems if "column 'image'" in p)
    assert no_image.startswith(f"{jsonl}, row 5 (line 5)") and "no image path" in no_image


def test_errors_in_image_folder_and_files(tmp_path):
    write_png(tmp_path / "root" / "cat" / "1.png")
    (tmp_path / "root" / "dog").mkdir()
    (tmp_path / "root" / "dog" / "2.jpg").write_bytes(b"\x00\x01")
    problems, _ = _problems(tmp_path / "root", label_names=["dog"])
    assert any(
        p.startswith(str(tmp_path / "root" / "cat" / "1.png")) and "label 'cat'" in p for p in problems
    )
    assert any(p.startswith(str(tmp_path / "root" / "dog" / "2.jpg")) and "unreadable" in p for p in problems)
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        load_local_dataset({"train": tmp_path / "nope.csv"})
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ValueError, match=r"use \.csv, \.jsonl"):
        load_local_dataset(tmp_path / "x.parquet")


# ------------------------------------------------------------------------------------------------- collator


def _image(color, mode="RGB"):
    return Image.fromarray(np.full((10, 12, 3), color, dtype=np.uint8)).convert(mode)


def _examples():
    return [
        {"question": "what is the shape ?", "image": _image((255, 0, 0)), "label": 2, "image_id": 7},
        {"question": "a cat", "image": _image((0, 255, 0), mode="L"), "label": 0, "image_id": 8},
    ]


def test_collator_text_and_image():
    processor = TinyProcessor()
    batch = MultimodalDataCollator(processor)(_examples())
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "pixel_values", "labels"}
    reference = processor.tokenizer(["what is the shape ?", "a cat"], padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"])
    assert batch["pixel_values"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [2, 0]
    # the grayscale image was converted to RGB before processing: same pixels as an explicit conversion
    expected = processor.image_processor(
        images=[_image((0, 255, 0), mode="L").convert("RGB")], return_tensors="pt"
    )
    assert torch.allclose(batch["pixel_values"][1], expected["pixel_values"][0])
    assert all(image.mode == "RGB" for image in processor.last_call["images"])


def test_collator_text_only_never_touches_images():
    processor = TinyProcessor()
    examples = [dict(e, image=object()) for e in _examples()]  # would fail if converted
    batch = MultimodalDataCollator(processor, modalities=["text"], max_length=4)(examples)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert processor.last_call["images"] is None
    assert processor.last_call["max_length"] == 4 and processor.last_call["truncation"] is True
    assert batch["input_ids"].shape == (2, 4)


def test_collator_image_only_without_text_column():
    processor = TinyProcessor()
    examples = [{"image": e["image"], "label": e["label"]} for e in _examples()]
    batch = MultimodalDataCollator(processor, modalities=("image",))(examples)
    assert set(batch) == {"pixel_values", "labels"}
    assert processor.last_call["text"] is None and "padding" not in processor.last_call
    assert batch["pixel_values"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_collator_multi_hot_and_soft_labels():
    examples = [
        {"question": "a", "label": [0, 2]},
        {"question": "b", "label": [3]},
        {"question": "c", "label": []},
    ]
    multi_hot = MultimodalDataCollator(TinyProcessor(), modalities=["text"], num_labels=4)
    batch = multi_hot(examples)
    expected = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    assert batch["labels"].dtype == torch.float32 and torch.equal(batch["labels"], expected)
    soft = [
        {"question": "a", "label": [0.3, 0.0, 0.9, 0.0]},
        {"question": "b", "label": [0.0, 1.0, 0.0, 0.0]},
    ]
    batch = multi_hot(soft)
    assert torch.allclose(batch["labels"], torch.tensor([[0.3, 0.0, 0.9, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="num_labels is not set"):
        MultimodalDataCollator(TinyProcessor(), modalities=["text"])(examples)
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        MultimodalDataCollator(TinyProcessor(), modalities=["text"], num_labels=4)(
            [{"question": "a", "label": [4]}]
        )


def test_collator_passes_teacher_logits_through():
    logits = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.25]], dtype=np.float64)
    text_logits = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    examples = [
        dict(e, teacher_logits=logits[i], teacher_logits_text=text_logits[i], teacher_logitsx=1)
        for i, e in enumerate(_examples())
    ]
    batch = MultimodalDataCollator(TinyProcessor())(examples)
    assert batch["teacher_logits"].dtype == torch.float32
    assert torch.equal(batch["teacher_logits"], torch.tensor(logits, dtype=torch.float32))
    assert torch.equal(batch["teacher_logits_text"], torch.tensor(text_logits))
    assert "teacher_logitsx" not in batch and "image_id" not in batch


def test_collator_from_model_and_errors():
    config = SimpleNamespace(modalities=["text"], problem_type="multi_label_classification", num_labels=3)
    collator = MultimodalDataCollator.from_model(SimpleNamespace(config=config), TinyProcessor())
    assert collator.modalities == ("text",) and collator.num_labels == 3
    plain = MultimodalDataCollator.from_model(
        SimpleNamespace(config=SimpleNamespace(num_labels=2)), TinyProcessor()
    )
    assert plain.modalities == ("text", "image") and plain.num_labels is None
    with pytest.raises(KeyError, match=r"column 'question'.*text_column="):
        MultimodalDataCollator(TinyProcessor())([{"text": "a", "image": _image((0, 0, 0)), "label": 0}])
    with pytest.raises(ValueError, match="modalities must be"):
        MultimodalDataCollator(TinyProcessor(), modalities=["audio"])


def test_collator_regression_labels_and_image_paths(tmp_path):
    path = write_png(tmp_path / "gray.png", color=(10, 20, 30), mode="L")
    examples = [{"image": path, "label": 0.5}, {"image": {"path": path, "bytes": None}, "label": -1.25}]
    processor = TinyProcessor()
    batch = MultimodalDataCollator(processor, modalities=["image"])(examples)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.5, -1.25]
    expected = processor.image_processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")
    assert torch.allclose(batch["pixel_values"], expected["pixel_values"].expand(2, -1, -1, -1))


def test_collator_on_easy_vqa_and_local_data(easy, tmp_path):
    rows = [easy["train"][i] for i in range(3)]
    batch = MultimodalDataCollator(TinyProcessor())(rows)
    assert batch["pixel_values"].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["labels"].tolist() == [r["label"] for r in rows]
    write_png(tmp_path / "a.png")
    csv_path = _write_csv(tmp_path / "d.csv", ["image", "text", "label"], [["a.png", "cat", "a|b"]])
    local = load_local_dataset(csv_path, multi_label=True, label_names=["a", "b", "c"])
    collator = MultimodalDataCollator(TinyProcessor(), text_column="text", num_labels=3)
    assert collator([local["train"][0]])["labels"].tolist() == [[1.0, 1.0, 0.0]]
