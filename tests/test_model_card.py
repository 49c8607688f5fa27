"""Tests for hf_msd.hub.build_model_card: YAML metadata, rendered body, save / load round trip."""

import pytest
import yaml
from huggingface_hub import ModelCard

from hf_msd.hub import build_model_card

MSD_TITLE = "MSD: Saliency-aware Knowledge Distillation for Multimodal Understanding"
AGARWAL_TITLE = "From Multimodal to Unimodal Attention in Transformers using Knowledge Distillation"


def _card(**overrides):
    """A card for a text-only student: the student has no "image" score, the teacher has all three."""
    fields = {
        "model_name": "easy-vqa-msd-student",
        "method": "msd",
        "dataset_name": "easy-VQA",
        "accuracy": {
            "teacher": {"both": 0.97, "text": 0.41, "image": 0.3},
            "student": {"both": 0.91234, "text": 0.88},
        },
        "parameters": {"teacher": 1234567, "student": 98765},
        "hyperparameters": {"method": "msd", "temperature": 2.0, "epochs": 3},
        "student_description": "text-only 2-layer transformer",
        "teacher_description": "multimodal (text+image) fusion transformer",
        "repo_id": "someone/easy-vqa-msd-student",
    }
    fields.update(overrides)
    return build_model_card(**fields)


def _front_matter(text: str) -> dict:
    """The YAML block between the leading "---" lines, parsed independently of huggingface_hub."""
    head, yaml_block, _ = text.split("---\n", 2)
    assert head == ""
    return yaml.safe_load(yaml_block)


def _metrics(metadata: dict) -> dict[str, float]:
    """{metric name: value} over every model-index result (huggingface_hub groups them by dataset/task)."""
    (entry,) = metadata["model-index"]
    return {metric["name"]: metric["value"] for result in entry["results"] for metric in result["metrics"]}


def test_metadata_has_library_tags_and_student_accuracies():
    card = _card()
    for metadata in (_front_matter(card.content), card.data.to_dict()):
        assert metadata["library_name"] == "transformers"
        assert metadata["license"] == "apache-2.0"
        assert {"hf_msd", "knowledge-distillation", "msd"} <= set(metadata["tags"])
        assert metadata["metrics"] == ["accuracy"]
        assert "datasets" not in metadata
        assert metadata["model-index"][0]["name"] == "easy-vqa-msd-student"
        assert _metrics(metadata) == {"accuracy (both)": 0.91234, "accuracy (text)": 0.88}
        for result in metadata["model-index"][0]["results"]:
            assert result["task"]["type"] == "text-classification"
            assert result["dataset"] == {"name": "easy-VQA", "type": "easy-VQA", "split": "test"}


def test_method_tag_split_dataset_id_and_license_reach_the_metadata():
    card = _card(method="kd", eval_split="validation", dataset_id="someone/easy-vqa", license="mit")
    metadata = _front_matter(card.content)
    assert "kd" in metadata["tags"] and "msd" not in metadata["tags"]
    assert metadata["datasets"] == ["someone/easy-vqa"]
    assert metadata["license"] == "mit"
    for result in metadata["model-index"][0]["results"]:
        assert result["dataset"] == {"name": "easy-VQA", "type": "someone/easy-vqa", "split": "validation"}
    assert "Accuracy on the `validation` split of easy-VQA" in card.text
    assert "knowledge distillation on the full multimodal input" in card.text


def test_body_has_results_parameters_usage_and_citations():
    text = _card().text
    # "both" first, then the modalities by name; a missing score is "n/a"; 4 decimals.
    assert "| model | both | image | text |" in text
    assert "| teacher | 0.9700 | 0.3000 | 0.4100 |" in text
    assert "| student | 0.9123 | n/a | 0.8800 |" in text
    assert "| teacher | 1,234,567 |" in text
    assert "| student | 98,765 |" in text
    assert "| temperature | 2 |" in text and "| epochs | 3 |" in text and "| method | msd |" in text
    assert 'AutoModelForSequenceClassification.from_pretrained("someone/easy-vqa-msd-student")' in text
    assert 'AutoProcessor.from_pretrained("someone/easy-vqa-msd-student")' in text
    assert "A text-only 2-layer transformer distilled from a multimodal (text+image) fusion" in text
    assert f"title = {{{MSD_TITLE}}}" in text and "Jin, Woojeong" in text
    assert f"title = {{{AGARWAL_TITLE}}}" in text and "Agarwal, Dhruv" in text
    assert "{{ " not in text and " }}" not in text  # every template field was filled


def test_repo_id_defaults_to_the_model_name():
    text = _card(repo_id=None).text
    assert 'from_pretrained("easy-vqa-msd-student")' in text


def test_card_without_student_scores_has_no_model_index():
    card = _card(accuracy={"teacher": {"both": 0.5}})
    assert "model-index" not in _front_matter(card.content)
    assert "| teacher | 0.5000 |" in card.text


def test_unknown_method_raises_naming_it():
    with pytest.raises(ValueError, match=r"'distill'.*'kd'.*'msd'.*'none'"):
        _card(method="distill")


def test_save_and_load_round_trip(tmp_path):
    card = _card(dataset_id="someone/easy-vqa")
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    assert loaded.data.to_dict() == card.data.to_dict()
    assert _front_matter(path.read_text()) == card.data.to_dict()
    assert loaded.text == card.text
    assert _metrics(loaded.data.to_dict()) == {"accuracy (both)": 0.91234, "accuracy (text)": 0.88}


def test_hyperparameters_keep_their_precision_and_booleans():
    card = build_model_card(
        model_name="m",
        method="kd",
        dataset_name="easy-VQA",
        accuracy={"student": {"both": 0.5}},
        parameters={"teacher": 10, "student": 5},
        hyperparameters={"learning_rate": 5e-5, "flag": True, "epochs": 3},
        student_description="s",
        teacher_description="t",
    )
    text = str(card)
    assert "| learning_rate | 5e-05 |" in text
    assert "| flag | True |" in text
    assert "| epochs | 3 |" in text


def test_number_of_scored_examples_is_stated():
    assert "split of easy-VQA (1,000 examples), with both" in _card(num_eval_examples=1000).text
    assert "split of easy-VQA, with both" in _card().text
