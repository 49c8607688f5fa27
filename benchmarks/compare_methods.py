"""Compare distillation methods on one teacher: each variant is examples/run_msd.py with a few overrides.

    python benchmarks/compare_methods.py examples/configs/quick_easy_vqa.yaml \
        --teacher outputs/quick_easy_vqa/teacher --output_dir outputs/compare

Every variant starts from the same teacher and the same student initialisation (make_student's copy of
the teacher's layers) and trains with the config's settings; only the method / weighting / student
modalities change. Prints a markdown table (test accuracy with both modalities and each alone, student
training time per step relative to plain fine-tuning, run one after another on this machine) and writes
it with the raw summaries to ``<output_dir>/compare_methods.json``.
"""

import argparse
import json
from pathlib import Path

from hf_msd.experiment import parse_arguments, run_experiment

VARIANTS = {
    "fine-tune (no KD)": ["--method", "none"],
    "KD": ["--method", "kd"],
    "MSD uniform": ["--method", "msd", "--modality_weighting", "uniform"],
    "MSD population": ["--method", "msd", "--modality_weighting", "population"],
    "KD text-only student": ["--method", "kd", "--student_modalities", "text"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="A run_msd.py config file (YAML or JSON).")
    parser.add_argument(
        "--teacher", required=True, help="The trained teacher's folder (shared by all variants)."
    )
    parser.add_argument("--output_dir", default="outputs/compare")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="Comma-separated subset of the variants."
    )
    args = parser.parse_args()

    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    rows, summaries = [], {}
    for name in names:
        out = Path(args.output_dir) / name.replace(" ", "_").replace("(", "").replace(")", "")
        argv = [
            args.config,
            *VARIANTS[name],
            "--teacher_name_or_path",
            args.teacher,
            "--output_dir",
            str(out),
            "--teacher_cache_dir",  # one teacher-output cache for every arm (files named by fingerprint)
            str(Path(args.output_dir) / "teacher_outputs"),
        ]
        summary = run_experiment(*parse_arguments(argv))
        summaries[name] = summary
        training = summary["student_training"]
        step_time = training["train_runtime"] / training["steps"]
        scores = summary["evaluation"]["student"]
        rows.append((name, scores, summary["parameters"]["student"], step_time))

    baseline = rows[0][3]
    lines = [
        "| student | params | acc (both) | acc (text) | acc (image) | step time / fine-tune step time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    teacher = next(iter(summaries.values()))["evaluation"]["teacher"]
    lines.append(
        f"| teacher | {next(iter(summaries.values()))['parameters']['teacher']:,} | "
        + " | ".join(f"{teacher[c]['accuracy']:.4f}" for c in ("both", "text", "image"))
        + " | |"
    )
    for name, scores, params, step_time in rows:
        cells = [f"{scores[c]['accuracy']:.4f}" if c in scores else "n/a" for c in ("both", "text", "image")]
        lines.append(f"| {name} | {params:,} | " + " | ".join(cells) + f" | {step_time / baseline:.2f} |")
    table = "\n".join(lines)
    print(table)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    report = {"table": table, "summaries": summaries}
    (Path(args.output_dir) / "compare_methods.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
