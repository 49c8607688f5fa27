"""Tests for hf_msd.hub: the card builder (YAML metadata by the Hub's conventions, rendered body, save / load
round trip) and the DistillationTrainer / MSDTrainer card written by create_model_card."""

import pytest
import yaml
from huggingface_hub import ModelCard

from hf_msd import DistillationTrainer
from hf_msd.hub import build_model_card, card_speed, hub_id, task_type, training_hyperparameters
from tests.helpers.distillation import make_args, teacher_and_student, token_dataset

MSD_TITLE = "MSD: Saliency-aware Knowledge Distillation for Multimodal Understanding"
AGARWAL_TITLE = "From Multimodal to Unimodal Attention in Transformers using Knowledge Distillation"
EVALUATION = {
    "teacher": {
        "both": {"accuracy": 0.97, "loss": 0.1},
        "text": {"accuracy": 0.41},
        "image": {"accuracy": 0.3},
    },
    "student": {"both": {"accuracy": 0.91234, "loss": 0.3}, "text": {"accuracy": 0.88}},
}


def _card(**overrides):
    """A card for a text-only student: the student has no "image" score, the teacher has all three."""
    fields = {
        "model_name": "easy-vqa-msd-student",
        "method": "msd",
        "dataset_name": "easy-VQA",
        "evaluation": EVALUATION,
        "parameters": {"teacher": 1234567, "student": 98765},
        "hyperparameters": {
            "method": "msd",
            "temperature": 2.0,
            "kd_loss_weight": 1.0,
            "modality_weighting": "population",
            "modality_loss_weight": 0.5,
            "num_train_epochs": 3,
        },
        "student_modalities": ["text"],
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


def test_metadata_follows_the_hub_conventions():
    card = _card(teacher_name_or_path="someone/easy-vqa-teacher")
    for metadata in (_front_matter(card.content), card.data.to_dict()):
        assert metadata["library_name"] == "transformers"
        assert metadata["pipeline_tag"] == "text-classification"  # a text-only student
        assert metadata["license"] == "apache-2.0"
        assert metadata["base_model"] == "someone/easy-vqa-teacher"
        assert {"hf_msd", "knowledge-distillation", "multimodal-classification", "msd"} <= set(
            metadata["tags"]
        )
        assert metadata["metrics"] == ["accuracy"]
        assert "datasets" not in metadata
        assert metadata["model-index"][0]["name"] == "easy-vqa-msd-student"
        # The student's scores, without its loss.
        assert _metrics(metadata) == {"accuracy (both)": 0.91234, "accuracy (text)": 0.88}
        for result in metadata["model-index"][0]["results"]:
            assert result["task"]["type"] == "text-classification"
            assert result["dataset"] == {"name": "easy-VQA", "type": "easy-VQA", "split": "test"}


def test_task_type_follows_the_student_inputs():
    assert task_type(["text"]) == "text-classification"
    assert task_type(["image"]) == "image-classification"
    assert task_type(["text", "image"], question_answering=True) == "visual-question-answering"
    assert task_type(["text", "image"]) == "other"
    metadata = _card(student_modalities=["text", "image"], question_answering=True).data.to_dict()
    # transformers 5 serves no visual-question-answering pipeline: no pipeline_tag for a text+image student
    assert "pipeline_tag" not in metadata
    import transformers.pipelines

    assert "visual-question-answering" not in transformers.pipelines.SUPPORTED_TASKS
    for modalities in (["text"], ["image"]):
        tag = _card(student_modalities=modalities).data.pipeline_tag
        assert tag in transformers.pipelines.SUPPORTED_TASKS
    assert metadata["model-index"][0]["results"][0]["task"]["type"] == "visual-question-answering"


def test_base_model_only_for_a_hub_id(tmp_path):
    assert hub_id("someone/teacher") == "someone/teacher"
    assert hub_id(str(tmp_path)) is None  # a local folder
    assert hub_id("not a/valid id!") is None
    assert hub_id(None) is None
    card = _card(teacher_name_or_path=str(tmp_path))
    assert "base_model" not in card.data.to_dict()
    assert f"(`{tmp_path}`)" in card.text


def test_method_split_dataset_id_and_license_reach_the_metadata():
    card = _card(method="kd", eval_split="validation", dataset_id="someone/easy-vqa", license="mit")
    metadata = _front_matter(card.content)
    assert "kd" in metadata["tags"] and "msd" not in metadata["tags"]
    assert metadata["datasets"] == ["someone/easy-vqa"]
    assert metadata["license"] == "mit"
    for result in metadata["model-index"][0]["results"]:
        assert result["dataset"] == {"name": "easy-VQA", "type": "someone/easy-vqa", "split": "validation"}
    assert "Accuracy on the `validation` split of easy-VQA" in card.text
    assert "knowledge distillation on the full multimodal input" in card.text


def test_body_has_results_size_speed_saliency_method_usage_and_citations():
    text = _card(
        throughput={"teacher": 100.0, "student": 250.0}, throughput_setting="batch 8", saliency_plot="s.png"
    ).text
    # One row per model and input condition: "both" first, then the modalities by name; 4 decimals; no row
    # for a condition a model was not scored on.
    results = (
        "| model | input | accuracy |\n|---|---|---|\n| teacher | both | 0.9700 |\n"
        "| teacher | image only | 0.3000 |\n| teacher | text only | 0.4100 |\n"
        "| student | both | 0.9123 |\n| student | text only | 0.8800 |\n"
    )
    assert results in text
    assert "| teacher | 1,234,567 |" in text and "| student | 98,765 |" in text
    assert "12.50x fewer parameters" in text  # 1234567 / 98765
    assert "teacher 100.0 examples/s, student 250.0 examples/s, a **2.50x** speed-up (batch 8)" in text
    assert "![Teacher modality saliency](s.png)" in text
    assert "- Logits: soft targets (kl) at temperature 2, weight 1." in text
    assert "weighted by `population` modality weights, weight 0.5." in text
    assert "| temperature | 2 |" in text and "| num_train_epochs | 3 |" in text and "| method | msd |" in text
    assert 'pipeline(model="someone/easy-vqa-msd-student", trust_remote_code=True)' in text
    assert 'classifier("what shape is in the image?")' in text  # a text-only student takes the bare text
    assert "## Intended use" in text and "## Limitations" in text
    assert "A text student distilled from a multimodal (text+image) fusion transformer" in text
    assert f"title = {{{MSD_TITLE}}}" in text and "Jin, Woojeong" in text
    assert f"title = {{{AGARWAL_TITLE}}}" in text and "Agarwal, Dhruv" in text
    assert "{{ " not in text and " }}" not in text  # every template field was filled


def test_speed_from_the_workflow_summary():
    speed = {
        "models": {"teacher": {"examples_per_second": 40.0}, "student": {"examples_per_second": 100.0}},
        "batches": 4,
        "batch_size": 32,
        "rounds": 5,
    }
    text = _card(**card_speed(speed)).text
    assert "teacher 40.0 examples/s, student 100.0 examples/s, a **2.50x** speed-up" in text
    assert "(4 batches of 32 test examples, median of 5 interleaved rounds" in text
    assert card_speed(None) == {}


def test_compiled_speed_rows_are_compared_to_the_eager_teacher_with_the_compile_time():
    speed = {
        "models": {
            "teacher": {"examples_per_second": 40.0},
            "teacher (compiled)": {"examples_per_second": 60.0},
            "student": {"examples_per_second": 100.0},
            "student (compiled)": {"examples_per_second": 250.0},
        },
        "compile_seconds": {"teacher (compiled)": 31.2, "student (compiled)": 18.7},
        "batches": 4,
        "batch_size": 32,
        "rounds": 5,
    }
    text = _card(**card_speed(speed)).text
    assert "teacher 40.0 examples/s, student 100.0 examples/s, a **2.50x** speed-up" in text
    assert "teacher (compiled) 60.0 examples/s (1.50x the teacher)" in text
    assert "student (compiled) 250.0 examples/s (6.25x the teacher)" in text
    assert "after a one-off compile of 31 s (teacher), 19 s (student)" in text


def test_missing_speed_and_plot_are_said_not_invented():
    text = _card().text
    assert "Inference speed was not measured by this run." in text
    assert "No saliency plot was recorded by this run." in text


def test_card_without_student_scores_has_no_model_index():
    card = _card(evaluation={"teacher": {"both": {"accuracy": 0.5}}})
    assert "model-index" not in _front_matter(card.content)
    assert "| teacher | both | 0.5000 |" in card.text


def test_several_metrics_get_one_column_each():
    evaluation = {
        "teacher": {"both": {"exact_match": 0.6}, "text": {"micro_f1": 0.5}},
        "student": {"both": {"exact_match": 0.5, "micro_f1": 0.75}, "text": {"exact_match": 0.25}},
    }
    card = _card(evaluation=evaluation)
    assert "| model | input | exact_match | micro_f1 |" in card.text
    assert "| teacher | both | 0.6000 | n/a |\n| teacher | text only | n/a | 0.5000 |" in card.text
    assert "| student | both | 0.5000 | 0.7500 |\n| student | text only | 0.2500 | n/a |" in card.text
    assert _metrics(card.data.to_dict()) == {
        "exact_match (both)": 0.5,
        "micro_f1 (both)": 0.75,
        "exact_match (text)": 0.25,
    }
    # Per-type accuracies are columns beside the overall one; a condition without them shows "n/a".
    student = {"both": {"accuracy": 0.5, "accuracy_shape": 0.4}, "text": {"accuracy": 0.3}}
    per_type = _card(evaluation={"student": student}).text
    assert "| model | input | accuracy | accuracy_shape |" in per_type
    assert "| student | both | 0.5000 | 0.4000 |\n| student | text only | 0.3000 | n/a |" in per_type


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
    assert {(r.metric_name, r.metric_value) for r in loaded.data.eval_results} == {
        ("accuracy (both)", 0.91234),
        ("accuracy (text)", 0.88),
    }


def test_hyperparameters_from_training_arguments(tmp_path):
    args = make_args(tmp_path, temperature=3.0, kd_loss_weight=0.7, learning_rate=5e-5)
    values = training_hyperparameters(args, "kd")
    assert values["method"] == "kd"
    assert values["temperature"] == 3.0 and values["kd_loss_weight"] == 0.7
    assert values["learning_rate"] == 5e-5
    assert "modality_weighting" not in values
    assert values["num_train_epochs"] == 3 and "max_steps" not in values
    steps = training_hyperparameters(make_args(tmp_path, max_steps=5), "kd")
    assert steps["max_steps"] == 5 and "num_train_epochs" not in steps  # max_steps overrides the epochs
    assert "temperature" not in training_hyperparameters(args, "none")
    text = _card(hyperparameters={"learning_rate": 5e-5, "flag": True}).text
    assert "| learning_rate | 5e-05 |" in text and "| flag | True |" in text


def test_number_of_scored_examples_is_stated():
    assert "split of easy-VQA (1,000 examples), with both" in _card(num_eval_examples=1000).text
    assert "split of easy-VQA, with both" in _card().text


def test_distillation_trainer_writes_hf_msd_card(tmp_path):
    teacher, student = teacher_and_student()
    dataset = token_dataset(8)
    args = make_args(tmp_path, max_steps=1, eval_strategy="no")
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=dataset, eval_dataset=dataset
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.create_model_card(model_name="tiny-kd", dataset="tiny tokens", finetuned_from="someone/teacher")
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "someone/teacher"
    assert "kd" in data["tags"] and "generated_from_trainer" not in data["tags"]
    assert "unknown dataset" not in card.text and "Trained on tiny tokens." in card.text
    assert f"| student | {sum(p.numel() for p in student.parameters()):,} |" in card.text
    # The last evaluation (its scores, not its loss) becomes the results, on the validation split.
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results == {"teacher_agreement (both)": pytest.approx(metrics["eval_teacher_agreement"])}
    assert all(r.dataset_split == "validation" for r in card.data.eval_results)
