"""Push to the Hub and serve, end to end, against the local stand-in Hub of tests/helpers/hub_server.py.

A tiny student is pushed twice, by the workflow (`examples/run_msd.py --push_to_hub`) and by
`DistillationTrainer.push_to_hub()`; a fresh process in which `import hf_msd` fails then downloads both with
`snapshot_download` and serves them with `pipeline(..., trust_remote_code=True)`. Its answers must equal the
pushed models' own outputs, and the pushed card must carry the run's summary.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import torch
import transformers.utils.hub
from datasets import Dataset
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoModelForSequenceClassification, AutoProcessor

from hf_msd import DistillationTrainer, DistillationTrainingArguments
from tests.helpers.hub_server import LocalHub, metadata_errors
from tests.helpers.models import tiny_model, tiny_processor

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "what color is the shape?"

# Runs in a fresh interpreter (-I: no PYTHONPATH, no script folder) where importing hf_msd raises.
SERVE_SCRIPT = r"""
import importlib.abc, json, sys


class BlockHfMsd(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "hf_msd" or name.startswith("hf_msd."):
            raise ImportError(f"{name} is blocked: this process stands for a machine without hf_msd")


sys.meta_path.insert(0, BlockHfMsd())
from huggingface_hub import snapshot_download
from transformers import pipeline

repos, image, question = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
results = {}
for repo_id in repos:
    folder = snapshot_download(repo_id)
    classifier = pipeline(model=folder, trust_remote_code=True)  # task and code from the repository
    results[repo_id] = {
        "folder": folder,
        "task": classifier.task,
        "answer": classifier({"image": image, "text": question}, top_k=None),
    }
results["hf_msd_imported"] = sorted(name for name in sys.modules if name.split(".")[0] == "hf_msd")
print("RESULTS" + json.dumps(results))
"""


def _expected(folder: Path, image: Image.Image) -> list[tuple[str, float]]:
    """The pushed student's answer, computed here from its local folder (hf_msd imported)."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**processor(images=[image], text=[QUESTION], return_tensors="pt")).logits[0]
    probabilities = torch.softmax(logits.double(), -1)
    return [
        (model.config.id2label[int(i)], probabilities[i].item())
        for i in torch.argsort(probabilities, descending=True)
    ]


def _hub_env(hub: LocalHub, home: Path) -> dict[str, str]:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.pop("HF_HUB_OFFLINE", None)
    return env


def _push_with_the_workflow(hub: LocalHub, tmp_path: Path) -> Path:
    command = [
        sys.executable,
        str(ROOT / "examples" / "run_msd.py"),
        str(ROOT / "examples" / "configs" / "tiny_easy_vqa.yaml"),
        "--output_dir",
        str(tmp_path / "run"),
        "--max_train_samples",
        "32",
        "--max_eval_samples",
        "16",
        "--saliency_max_samples",
        "16",
        "--max_test_samples",
        "16",
        "--push_to_hub",
        "--hub_model_id",
        "me/tiny-msd-student",
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=_hub_env(hub, tmp_path / "home"), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp_path / "run"


def _push_with_the_trainer(hub: LocalHub, tmp_path: Path, monkeypatch) -> Path:
    # huggingface_hub read HF_ENDPOINT when this process imported it: point it (and transformers' shared
    # HfApi) to the stand-in for this test only.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    labels = {0: "red", 1: "green", 2: "blue"}
    label_fields = {"id2label": labels, "label2id": {v: k for k, v in labels.items()}}
    teacher, student = (
        tiny_model(seed=0, **label_fields),
        tiny_model(seed=1, num_hidden_layers=1, **label_fields),
    )
    processor = tiny_processor(tmp_path / "processor")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(8)]
    features = processor(images=images, text=[QUESTION] * 8)
    dataset = Dataset.from_dict({k: v.tolist() for k, v in features.items()} | {"labels": [0, 1, 2, 0] * 2})
    output_dir = tmp_path / "trainer"
    args = DistillationTrainingArguments(
        output_dir=str(output_dir),
        hub_model_id="me/tiny-kd-student",
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=dataset, processing_class=processor
    )
    trainer.train()
    trainer.push_to_hub(dataset="tiny shapes", finetuned_from="me/tiny-teacher")
    return output_dir


def test_push_download_and_serve_without_hf_msd(hub, tmp_path, monkeypatch):
    run_dir = _push_with_the_workflow(hub, tmp_path)
    trainer_dir = _push_with_the_trainer(hub, tmp_path, monkeypatch)
    for repo_id in ("me/tiny-msd-student", "me/tiny-kd-student"):
        files = hub.files(repo_id)
        assert {"README.md", "config.json", "model.safetensors", "multimodal_classification.py"} <= set(files)
        assert metadata_errors(files["README.md"].decode()) == []
    assert "saliency.png" in hub.files("me/tiny-msd-student")
    assert not any(name.startswith("checkpoint-") for name in hub.files("me/tiny-kd-student"))

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    image.save(tmp_path / "shape.png")
    repos = ["me/tiny-msd-student", "me/tiny-kd-student"]
    result = subprocess.run(
        [sys.executable, "-I", "-c", SERVE_SCRIPT, json.dumps(repos), str(tmp_path / "shape.png"), QUESTION],
        cwd=tmp_path,
        env=_hub_env(hub, tmp_path / "fresh-home"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    served = json.loads(result.stdout.split("RESULTS", 1)[1])
    assert served["hf_msd_imported"] == []
    for repo_id, local in zip(repos, (run_dir / "student", trainer_dir)):
        assert served[repo_id]["task"] == "multimodal-classification"
        answer = [(entry["label"], entry["score"]) for entry in served[repo_id]["answer"]]
        expected = _expected(local, image)
        assert [label for label, _ in answer] == [label for label, _ in expected]
        np.testing.assert_allclose([s for _, s in answer], [s for _, s in expected], atol=1e-5)

    # The workflow's card, as downloaded: its results are the run's summary.
    summary = json.loads((run_dir / "summary.json").read_text())
    card = ModelCard.load(Path(served["me/tiny-msd-student"]["folder"]) / "README.md")
    results = {(r.metric_name, r.metric_value) for r in card.data.eval_results}
    student = summary["evaluation"]["student"]
    assert results == {
        (f"{metric} ({condition})", value)
        for condition, metrics in student.items()
        for metric, value in metrics.items()
        if metric != "loss"
    }
    assert {r.task_type for r in card.data.eval_results} == {"visual-question-answering"}
    assert card.data.pipeline_tag is None  # no transformers task serves text+image (the card says so)
    assert "multimodal-classification` pipeline" in card.text
    assert "![Teacher modality saliency](saliency.png)" in card.text
    speed = summary.get("inference_speed")  # the speed-up the run measured, or the card says none was
    if speed:
        rates = {name: values["examples_per_second"] for name, values in speed["models"].items()}
        assert f"a **{rates['student'] / rates['teacher']:.2f}x** speed-up" in card.text
    else:
        assert "Inference speed was not measured by this run." in card.text

    # The trainer's card: hf_msd's, not transformers' generic one.
    card = ModelCard.load(Path(served["me/tiny-kd-student"]["folder"]) / "README.md")
    assert card.data.base_model == "me/tiny-teacher"
    assert "generated_from_trainer" not in card.data.tags and "kd" in card.data.tags
    assert "Trained on tiny shapes." in card.text
