"""End-to-end: examples/run_vlm_msd.py on a tiny easy-VQA slice, as a user runs it (the three teacher stages,
every arm with the teacher's and a random vision tower, two label fractions, the three-input evaluation), and
its student served by ``pipeline("image-text-to-text")``; each family (llava, idefics3, qwen2_vl); a second
run on the first run's saved teacher (``teacher_path``)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration, pipeline

from hf_msd.data import VisionLanguageCollator, easy_vqa_answers, load_easy_vqa
from hf_msd.models.vision_language import load_vlm, tiny_vlm, vlm_processor
from tests.helpers.vlm import WORDS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "run_vlm_msd.py"
CONFIG = ROOT / "examples" / "configs" / "vlm_easy_vqa.yaml"
TINY = {
    "--train_samples": "64",
    "--validation_samples": "16",
    "--test_samples": "12",
    "--tower_samples": "200",
    "--tower_epochs": "1",
    "--align_epochs": "1",
    "--instruct_epochs": "1",
    "--student_steps": "2",
    "--batch_size": "8",
    "--seeds": "[0]",
    "--teacher": "{hidden_size: 16, num_layers: 2, vision_hidden_size: 16, vision_layers: 1}",
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
INPUTS = ["image+question", "question only", "swapped image"]
# Each family's vision tower, from transformers' modeling files (Qwen2-VL's: `visual` without its merger).
TOWER = {
    "llava": ("model.vision_tower.",),
    "idefics3": ("model.vision_model.",),
    "qwen2_vl": ("model.visual.patch_embed.", "model.visual.blocks."),
}


def run_example(options: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), str(CONFIG), *[x for pair in options.items() for x in pair]]
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def test_the_example_builds_the_teacher_trains_every_arm_and_serves_the_students(tmp_path):
    out = tmp_path / "run"
    result = run_example({**TINY, "--output_dir": str(out)})
    assert result.returncode == 0, result.stderr[-6000:]

    results = json.loads((out / "results.json").read_text())
    stages = results["teacher"]["stages"]
    assert list(stages) == ["tower", "align", "instruct"] and all(s["seconds"] > 0 for s in stages.values())
    assert set(stages["tower"]["validation_accuracy"]) == {"shape", "color"}
    teacher_arms = ["labels", "kd", "msd", "kd_full_target", "msd_text", "msd_image"]
    assert [run["run"] for run in results["runs"]] == [
        *(f"{arm}-teacher_tower-2pct" for arm in teacher_arms),
        "kd-random_tower-2pct",
        "msd-random_tower-2pct",
        "kd-teacher_tower-10pct",
        "msd-teacher_tower-10pct",
    ]
    check_scores(results)
    assert all(run["seconds_per_step"] > 0 for run in results["runs"])
    table = (out / "results.md").read_text()
    assert "| msd-teacher_tower-2pct | swapped image |" in table and "| teacher | question only |" in table
    assert "| kd-random_tower-2pct | image+question |" in result.stdout  # the table is printed at the end
    assert all(any(folder.iterdir()) for folder in out.rglob("*") if folder.is_dir())  # no empty folder

    check_teacher_reloads_and_generates(out, "llava", results)

    # The teacher is saved with its processor; a student keeps every other language-model layer and the
    # teacher's frozen vision tower, or a random one (the control).
    teacher = load_file(out / "teacher" / "model.safetensors")
    AutoProcessor.from_pretrained(out / "teacher")
    for name, same_tower in (("msd-teacher_tower-2pct", True), ("msd-random_tower-2pct", False)):
        student = load_file(out / f"student_{name}" / "model.safetensors")
        tower = [key for key in teacher if "vision_tower" in key]
        assert all(torch.equal(student[key], teacher[key]) for key in tower) == same_tower
        assert not any("language_model.layers.1." in key for key in student)

    # The saved MSD student: served by the image-text-to-text pipeline, which answers as the model's own
    # greedy generation on the collator's prompt does; its card carries the pipeline tag.
    folder = out / "student_msd-teacher_tower-2pct"
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

    # The same MSD student trained with the teacher online, on the first run's saved teacher (teacher_path):
    # no teacher stage runs, the teacher scores as in the first run and is saved again unchanged, and the
    # cached outputs (the whole vocabulary per answer token) give the same student.
    online = tmp_path / "online"
    options = {
        **TINY,
        "--output_dir": str(online),
        "--students": "[{arms: [msd], vision_tower: teacher, label_fraction: 0.02}]",
        "--cache_teacher_outputs": "false",
        "--teacher_path": str(out / "teacher"),
    }
    result = run_example(options)
    assert result.returncode == 0, result.stderr[-6000:]
    assert "teacher online" in (online / "results.md").read_text()
    reused = json.loads((online / "results.json").read_text())["teacher"]
    assert reused["stages"] == {} and '"teacher stage"' not in result.stdout  # no stage's line
    assert "no teacher stage run" in (online / "results.md").read_text()
    assert reused["accuracy"] == results["teacher"]["accuracy"]
    assert reused["validation_accuracy"] == results["teacher"]["validation_accuracy"]
    saved_again = load_file(online / "teacher" / "model.safetensors")
    assert saved_again.keys() == teacher.keys()
    assert all(torch.equal(saved_again[key], teacher[key]) for key in teacher)
    assert not (online / "teacher_outputs").exists()
    cached_weights = load_file(folder / "model.safetensors")
    online_weights = load_file(online / "student_msd-teacher_tower-2pct" / "model.safetensors")
    assert online_weights.keys() == cached_weights.keys()
    for name, value in online_weights.items():
        torch.testing.assert_close(cached_weights[name], value, rtol=1e-4, atol=1e-6, msg=name)


def check_scores(results: dict) -> None:
    """Every model of ``results`` is scored on the three inputs, overall and per question type."""
    for scores in [results["teacher"]["accuracy"], *(run["accuracy"] for run in results["runs"])]:
        assert list(scores) == INPUTS
        for by_type in scores.values():
            assert set(by_type) == {"all", "yes/no", "shape", "color"}
            assert all(0.0 <= value <= 1.0 for value in by_type.values())


def check_teacher_reloads_and_generates(out: Path, family: str, results: dict) -> None:
    """The saved teacher reloads as a ``family`` model with its processor, and its greedy answers to the test
    questions (with their image) score what the run reported."""
    teacher, processor = load_vlm(str(out / "teacher"), family)
    assert teacher.config.model_type == family
    limits = {"validation": int(TINY["--validation_samples"]), "test": int(TINY["--test_samples"])}
    rows = list(load_easy_vqa(max_samples=limits, seed=0)["test"])
    collator = VisionLanguageCollator(processor, views=False)
    inputs = collator.generation_inputs(rows)
    with torch.no_grad():
        output = teacher.eval().generate(**inputs, max_new_tokens=3, do_sample=False)
    answers = collator.tokenizer.batch_decode(
        output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert all(answer.strip() for answer in answers)
    names = easy_vqa_answers()
    hits = [answer.strip() == names[row["label"]] for answer, row in zip(answers, rows)]
    assert sum(hits) / len(hits) == results["teacher"]["accuracy"]["image+question"]["all"]


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_the_example_runs_every_stage_with_each_family(tmp_path, family):
    out = tmp_path / family
    students = (
        "[{arms: [msd], vision_tower: teacher, label_fraction: 0.02}, "
        "{arms: [kd], vision_tower: random, label_fraction: 0.02}]"
    )
    options = {**TINY, "--output_dir": str(out), "--family": family, "--students": students}
    result = run_example(options)
    assert result.returncode == 0, result.stderr[-6000:]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["family"] == family
    stages = results["teacher"]["stages"]
    assert list(stages) == ["tower", "align", "instruct"] and all(s["seconds"] > 0 for s in stages.values())
    assert set(stages["tower"]["validation_accuracy"]) == {"shape", "color"}
    assert [run["run"] for run in results["runs"]] == ["msd-teacher_tower-2pct", "kd-random_tower-2pct"]
    check_scores(results)
    assert "| kd-random_tower-2pct | swapped image |" in result.stdout  # the table is printed at the end
    assert f"tiny `{family}` models" in (out / "results.md").read_text()
    assert all(any(folder.iterdir()) for folder in out.rglob("*") if folder.is_dir())  # no empty folder
    check_teacher_reloads_and_generates(out, family, results)

    # The students: the teacher's frozen tower, or a random one; one language-model layer of the two.
    teacher, _ = load_vlm(str(out / "teacher"), family)
    theirs = dict(teacher.named_parameters())
    for name, same_tower in (("msd-teacher_tower-2pct", True), ("kd-random_tower-2pct", False)):
        student, _ = load_vlm(str(out / f"student_{name}"), family)
        assert student.config.text_config.num_hidden_layers == 1
        tower = {n: p for n, p in student.named_parameters() if n.startswith(TOWER[family])}
        assert tower and all(torch.equal(p, theirs[n]) for n, p in tower.items()) == same_tower
        card = (out / f"student_{name}" / "README.md").read_text()
        assert family in yaml.safe_load(card.split("---")[1])["tags"]


def load_example():
    spec = importlib.util.spec_from_file_location("run_vlm_msd", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_student_groups_are_refused_by_name_before_anything_runs():
    example = load_example()
    cases = {
        ("--cache_teacher_outputs", "false"): "the arm kd_full_target needs --cache_teacher_outputs true",
        (
            "--students",
            "[{arms: [kd_full_target, msd], vision_tower: teacher, label_fraction: 0.02}]",
        ): "list an MSD arm (msd, msd_text or msd_image) before kd_full_target",
        (
            "--modality_weighting",
            "instance",
        ): "kd_full_target takes --modality_weighting uniform or population",
        ("--students", "[{arms: [kd], vision_tower: shared, label_fraction: 0.02}]"): "vision_tower 'shared'",
        ("--students", "[{arms: [distil], vision_tower: teacher, label_fraction: 0.02}]"): "unknown arm(s)",
        ("--students", "[{arms: [kd], vision_tower: teacher, label_fraction: 0}]"): "label_fraction must be",
        ("--family", "blip"): "--family: 'blip' is unknown; choose one of ['llava', 'idefics3', 'qwen2_vl'].",
    }
    for option, message in cases.items():
        with pytest.raises(SystemExit, match=re.escape(message)):
            example.load_config([str(CONFIG), *option])


def test_a_teacher_path_of_another_family_or_without_a_model_is_refused_before_anything_runs(tmp_path):
    example = load_example()
    saved = tmp_path / "teacher"
    processor = vlm_processor("qwen2_vl", WORDS)
    tiny_vlm(
        "qwen2_vl", processor, hidden_size=16, num_layers=1, vision_hidden_size=16, vision_layers=1
    ).save_pretrained(saved)
    message = (
        f"--teacher_path: '{saved}' holds a qwen2_vl teacher but --family is llava; set --family qwen2_vl"
    )
    with pytest.raises(SystemExit, match=re.escape(message)):
        example.load_config([str(CONFIG), "--teacher_path", str(saved)])
    config = example.load_config([str(CONFIG), "--teacher_path", str(saved), "--family", "qwen2_vl"])
    assert config["teacher_path"] == str(saved) and config["family"] == "qwen2_vl"
    with pytest.raises(SystemExit, match=re.escape(f"--teacher_path: no saved model in '{tmp_path}'")):
        example.load_config([str(CONFIG), "--teacher_path", str(tmp_path)])
