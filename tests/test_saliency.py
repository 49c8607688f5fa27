import math

import pytest
import torch
from PIL import Image

from hf_msd.architectures import default_modalities
from hf_msd.distillation.losses import MULTI_LABEL, REGRESSION, SINGLE_LABEL
from hf_msd.distillation.saliency import (
    SaliencyReport,
    compute_saliency,
    default_saliency,
    modality_saliency,
    plot_saliency,
    saliency_figure,
    saliency_fingerprint,
)
from hf_msd.modalities.modality import Modality
from tests.helpers.models import tiny_vilt
from tests.helpers.models import tiny_vilt_batch as vilt_batch
from tests.helpers.msd import ThreeInputModel

FULL = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
WITHOUT = torch.tensor([[0.0, 1.0, 0.0], [1.0, -2.0, 0.0]])


def hand_kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def sigmoid(v):
    return 1 / (1 + math.exp(-v))


def test_default_saliency_single_label_is_kl_full_to_without():
    got = default_saliency(FULL, WITHOUT, SINGLE_LABEL)
    want = [hand_kl(softmax(f), softmax(w)) for f, w in zip(FULL.tolist(), WITHOUT.tolist())]
    torch.testing.assert_close(got, torch.tensor(want))


def test_default_saliency_multi_label_is_mean_bernoulli_kl():
    got = default_saliency(FULL, WITHOUT, MULTI_LABEL)
    want = []
    for f_row, w_row in zip(FULL.tolist(), WITHOUT.tolist()):
        want.append(mean_bernoulli_kl(f_row, w_row))
    torch.testing.assert_close(got, torch.tensor(want))


def test_default_saliency_regression_is_mean_squared_difference():
    got = default_saliency(FULL, WITHOUT, REGRESSION)
    want = [sum((f - w) ** 2 for f, w in zip(fr, wr)) / 3 for fr, wr in zip(FULL.tolist(), WITHOUT.tolist())]
    torch.testing.assert_close(got, torch.tensor(want))


def test_saliency_fn_must_return_one_value_per_example():
    with pytest.raises(ValueError, match="one value per example"):
        modality_saliency(FULL, [WITHOUT], SINGLE_LABEL, saliency_fn=lambda t, u, p: (t - u).abs())


def collate(examples):
    return {key: torch.stack([example[key] for example in examples]) for key in examples[0]}


def as_dataset(batch):
    size = next(iter(batch.values())).shape[0]
    return [{key: value[i] for key, value in batch.items()} for i in range(size)]


@pytest.fixture(scope="module")
def vilt_report():
    teacher, student = tiny_vilt(seed=0), tiny_vilt(seed=1)
    batch = vilt_batch(batch_size=6)
    report = compute_saliency(
        teacher,
        as_dataset(batch),
        default_modalities(teacher),
        collate,
        batch_size=4,
        student=student,
        progress=False,
    )
    return teacher, student, batch, report


def mean_bernoulli_kl(full_row, without_row):
    per_label = [
        hand_kl([sigmoid(f), 1 - sigmoid(f)], [sigmoid(w), 1 - sigmoid(w)])
        for f, w in zip(full_row, without_row)
    ]
    return sum(per_label) / len(per_label)


def test_compute_saliency_on_vilt_matches_hand_computation(vilt_report):
    teacher, _, batch, report = vilt_report
    del batch["labels"]
    assert report.problem_type == MULTI_LABEL  # from the tiny ViLT's config
    with torch.no_grad():
        full = teacher(**batch).logits
        text_only = teacher(**{**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])}).logits
        image_only = teacher(
            **{
                **batch,
                "input_ids": torch.zeros_like(batch["input_ids"]),
                "attention_mask": torch.zeros_like(batch["attention_mask"]),
            }
        ).logits
    # s_text = D(T(x) || T(x without text)) and x without text = x_image; D = mean Bernoulli KL.
    want = [
        [mean_bernoulli_kl(f, i), mean_bernoulli_kl(f, t)]
        for f, t, i in zip(full.tolist(), text_only.tolist(), image_only.tolist())
    ]
    assert report.modality_names == ["text", "image"]
    torch.testing.assert_close(report.saliency, torch.tensor(want), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(report.mean, torch.tensor(want).mean(0), rtol=1e-4, atol=1e-6)
    predicted = full.argmax(-1, keepdim=True)
    torch.testing.assert_close(
        report.teacher_confidence["full"], full.sigmoid().gather(1, predicted).squeeze(1)
    )
    torch.testing.assert_close(
        report.teacher_confidence["image"], image_only.sigmoid().gather(1, predicted).squeeze(1)
    )
    assert set(report.student_confidence) == {"full", "text", "image"}
    assert report.population()["text"]["mean"] == pytest.approx(sum(r[0] for r in want) / 6, rel=1e-4)


def test_three_modalities_use_x_without_m():
    model = ThreeInputModel()
    modalities = [Modality(name, keys=[name]) for name in "abc"]
    batch = {
        key: torch.randn(5, 4, generator=torch.Generator().manual_seed(i)) for i, key in enumerate("abc")
    }
    report = compute_saliency(
        model,
        as_dataset(batch),
        modalities,
        collate,
        batch_size=2,
        problem_type=SINGLE_LABEL,
        device="cpu",
        progress=False,
    )
    with torch.no_grad():
        full = model(**batch).logits
        without_a = model(b=batch["b"], c=batch["c"]).logits
    want = [hand_kl(softmax(f), softmax(w)) for f, w in zip(full.tolist(), without_a.tolist())]
    torch.testing.assert_close(report.saliency[:, 0], torch.tensor(want), rtol=1e-4, atol=1e-6)


def test_plot_writes_a_png(vilt_report, tmp_path):
    *_, report = vilt_report
    path = plot_saliency(report, tmp_path / "saliency.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 400 and image.size[1] > 300
        low, high = image.convert("L").getextrema()
        assert high - low > 100  # something was drawn on the white background


@pytest.mark.parametrize("with_student", [False, True])
def test_every_panel_of_the_plot_has_data(with_student):
    saliency = torch.tensor([[0.5, 0.1], [1.5, 0.3], [1.0, 0.8]])
    confidence = {key: torch.tensor([0.9, 0.6, 0.4]) for key in ("full", "text", "image")}
    report = SaliencyReport(
        modality_names=["text", "image"],
        problem_type=SINGLE_LABEL,
        saliency=saliency,
        teacher_confidence=confidence,
        student_confidence=confidence if with_student else None,
    )
    panels = saliency_figure(report).axes  # those of its subfigures (rows) included
    assert len(panels) == (3 if with_student else 2) + 2
    for ax in panels:
        assert ax.get_visible() and ax.get_title()
        assert ax.patches or ax.lines, ax.get_title()  # bars or histogram patches drawn
    population = next(ax for ax in panels if ax.get_title().startswith("Population saliency"))
    heights = [bar.get_height() for bar in population.patches]
    # S_text = mean(0.5, 1.5, 1.0) = 1.0, S_image = mean(0.1, 0.3, 0.8) = 0.4
    assert heights == pytest.approx([1.0, 0.4])
    assert [label.get_text() for label in population.get_xticklabels()] == ["text", "image"]


def test_report_json_round_trip(vilt_report, tmp_path):
    *_, report = vilt_report
    report.fingerprint = "abc"
    report.save_json(tmp_path / "s.json")
    loaded = SaliencyReport.load_json(tmp_path / "s.json")
    torch.testing.assert_close(loaded.saliency, report.saliency)
    assert loaded.fingerprint == "abc" and loaded.modality_names == ["text", "image"]
    torch.testing.assert_close(loaded.teacher_confidence["text"], report.teacher_confidence["text"])


def test_fingerprint_changes_with_teacher_data_and_modalities():
    teacher = tiny_vilt()
    data = as_dataset(vilt_batch(batch_size=3))
    modalities = default_modalities(teacher)
    base = saliency_fingerprint(teacher, data, modalities)
    assert base == saliency_fingerprint(teacher, data, modalities)
    assert base != saliency_fingerprint(teacher, data[:2], modalities)
    assert base != saliency_fingerprint(teacher, data, modalities[::-1])
    with torch.no_grad():
        teacher.classifier[-1].bias.add_(1.0)
    assert base != saliency_fingerprint(teacher, data, modalities)
