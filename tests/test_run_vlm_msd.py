"""End-to-end: examples/run_vlm_msd.py on a tiny easy-VQA slice, as a user runs it, and its student served by
``pipeline("image-text-to-text")``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration, pipeline

from hf_msd.data import VisionLanguageCollator, load_easy_vqa

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "run_vlm_msd.py"
CONFIG = ROOT / "examples" / "configs" / "vlm_easy_vqa.yaml"


def test_the_example_trains_evaluates_and_serves_the_students(tmp_path):
    out = tmp_path / "run"
    tiny = {
        "--output_dir": str(out),
        "--train_samples": "48",
        "--test_samples": "12",
        "--teacher_epochs": "1",
        "--student_steps": "2",
        "--batch_size": "8",
        "--seeds": "[0]",
        "--teacher": "{hidden_size: 16, num_layers: 1, vision_hidden_size: 16, vision_layers: 1}",
        "--student": "{hidden_size: 8, num_layers: 1, vision_hidden_size: 8, vision_layers: 1}",
    }
    command = [sys.executable, str(SCRIPT), str(CONFIG), *[x for pair in tiny.items() for x in pair]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]

    results = json.loads((out / "results.json").read_text())
    assert [run["method"] for run in results["runs"]] == ["labels", "kd", "msd"]
    for run in results["runs"]:
        assert set(run["accuracy"]) == {"image+text", "text only", "image only"}
        for scores in run["accuracy"].values():
            assert set(scores) == {"all", "yes/no", "shape", "color"}
            assert all(0.0 <= value <= 1.0 for value in scores.values())
        assert run["seconds_per_step"] > 0
    assert "| msd | image only |" in (out / "results.md").read_text()

    # The saved MSD student: served by the image-text-to-text pipeline, which answers as the model's own
    # greedy generation on the collator's prompt does; its card carries the pipeline tag.
    folder = out / "student_msd"
    card = (folder / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["pipeline_tag"] == "image-text-to-text"
    example = load_easy_vqa(max_samples={"train": 1, "validation": 1, "test": 2}, seed=0)["test"][0]
    vqa = pipeline("image-text-to-text", model=str(folder))
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": example["image"]},
                {"type": "text", "text": example["question"]},
            ],
        }
    ]
    served = vqa(text=chat, max_new_tokens=3, return_full_text=False)[0]["generated_text"]
    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    collator = VisionLanguageCollator(AutoProcessor.from_pretrained(folder), views=False)
    inputs = collator.generation_inputs([example])
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    expected = collator.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert served.strip() == expected.strip()

    # The same MSD student trained from the teacher's cached outputs (the whole vocabulary per answer token):
    # the teacher runs once per example before training instead of every step, and the student is the same.
    cached = tmp_path / "cached"
    options = {**tiny, "--output_dir": str(cached), "--methods": "[msd]", "--cache_teacher_outputs": "true"}
    command = [sys.executable, str(SCRIPT), str(CONFIG), *[x for pair in options.items() for x in pair]]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]
    assert "teacher outputs cached" in (cached / "results.md").read_text()
    assert list((cached / "teacher_outputs").glob("teacher-outputs-*.arrow"))
    online_weights = load_file(folder / "model.safetensors")
    cached_weights = load_file(cached / "student_msd" / "model.safetensors")
    assert online_weights.keys() == cached_weights.keys()
    for name, value in online_weights.items():
        torch.testing.assert_close(cached_weights[name], value, rtol=1e-4, atol=1e-6, msg=name)
