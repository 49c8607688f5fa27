"""The README's "Your own data" command, run as written on a small CSV data set; then the student's model
card: its code blocks run against the saved folder, it names no file path as the data set, and the summary
says which split validated."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import PIL.Image

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"circle": "red", "square": "blue", "triangle": "green"}


def _readme_command() -> str:
    section = (ROOT / "README.md").read_text().split("## Your own data", 1)[1].split("\n## ", 1)[0]
    (command,) = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    return command


def _write_data(folder: Path) -> None:
    (folder / "images").mkdir(parents=True)
    rows = {"train": [], "test": []}
    for i in range(36):
        label = list(SHAPES)[i % 3]
        name = f"images/{i:04d}.png"
        PIL.Image.new("RGB", (64, 64), SHAPES[label]).save(folder / name)
        rows["train" if i < 27 else "test"].append(f"{name},what shape is this?,{label}")
    for split, lines in rows.items():
        (folder / f"{split}.csv").write_text("image,text,label\n" + "\n".join(lines) + "\n")


def _python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)\n```", card, re.S)


def test_readme_own_data_command_and_its_model_card(tmp_path):
    _write_data(tmp_path / "mydata")
    command = _readme_command().replace("examples/", f"{ROOT}/examples/")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    # The README's schedule on 27 examples: seconds; the speed measurement is skipped to keep it short.
    result = subprocess.run(
        f"{command} --speed_rounds 0",
        shell=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "outputs" / "mydata"
    for header in (
        "[hf_msd] teacher: training a new teacher for 3 epochs on 24 examples",
        "[hf_msd] saliency:",
        "[hf_msd] student: training with method 'msd' on 24 examples",
        "[hf_msd] evaluation: student on 9 test examples",
    ):
        assert header in result.stdout, result.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["validation"] == "0.1 of the train examples held out (seed 0); the test split is unused"
    assert summary["test_examples"] == 9

    card = (out / "student" / "README.md").read_text()
    assert "mydata/train.csv" not in card and "on the `test` split of local data" in card
    assert "pipeline_tag" not in card.split("---")[1]
    blocks = _python_blocks(card)
    assert len(blocks) == 2
    repo_id = re.search(r'pipeline\(model="([^"]+)"', blocks[0]).group(1)
    assert "/" in repo_id  # a namespaced repository id
    for block in blocks:
        code = block.replace(repo_id, str(out / "student"))
        code += (
            "\nprint(answer if 'answer' in dir() else classifier({'image': image, 'text': 'what shape?'}))"
        )
        run = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, f"{code}\n{run.stderr[-3000:]}"
        assert any(shape in run.stdout for shape in SHAPES), run.stdout  # a label of the data
