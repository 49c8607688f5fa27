"""Tower reuse: the fusion transformer (ViT and ResNet image towers) and the dual encoder run the
modality-only passes from the full pass's tower outputs, with the logits and gradients of separate passes on
``x_m`` (:func:`hf_msd.modalities.modality.restrict` under the registered spec); batch-norm running statistics
are the one named difference; the registry says which architectures qualify."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hf_msd.architectures import ARCHITECTURES, default_modalities, reuses_towers
from hf_msd.modalities.modality import Modality, restrict
from hf_msd.models import DualEncoderForSequenceClassification, MultimodalTransformerForSequenceClassification
from hf_msd.trainers.msd_config import MSDTrainingArguments
from hf_msd.trainers.msd_trainer import MSDTrainer
from tests.helpers.byom import architecture_batch, tiny_dual_encoder_config
from tests.helpers.models import TINY_RESNET, tiny_batch, tiny_config
from tests.helpers.msd import stack_collate

MODELS = ["vit", "resnet", "clip", "siglip"]


def build(kind: str, seed: int = 0):
    """A seeded tiny model in train mode (no dropout anywhere, so passes are deterministic) and a batch with
    int64 labels."""
    torch.manual_seed(seed)
    if kind in ("clip", "siglip"):
        model = DualEncoderForSequenceClassification(tiny_dual_encoder_config(tower=kind))
        batch = architecture_batch("msd_dual_encoder")
    else:
        overrides = {"vision_config": dict(TINY_RESNET)} if kind == "resnet" else {}
        model = MultimodalTransformerForSequenceClassification(tiny_config(**overrides))
        batch = tiny_batch(model.config, labels="single_label_classification")
    return model.train(), batch


def inputs_of(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "labels"}


def separate_logits(model, batch) -> list[torch.Tensor]:
    """Today's passes: the full input, then each ``x_m`` built by the registered removal."""
    spec = default_modalities(model)
    views = [restrict(inputs_of(batch), spec, m.name) for m in spec]
    return [model(**inputs).logits for inputs in [inputs_of(batch), *views]]


def reused_logits(model, batch) -> list[torch.Tensor]:
    """One tower pass: the full input with its tower outputs, then the fusion and head on each modality."""
    full = model(**inputs_of(batch), return_tower_outputs=True)
    towers = full.tower_outputs
    return [
        full.logits,
        *(model(tower_outputs={m.name: towers[m.name]}).logits for m in default_modalities(model)),
    ]


def summed_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    return sum(F.cross_entropy(z, labels) for z in logits)


@pytest.mark.parametrize("kind", MODELS)
def test_reused_logits_equal_separate_passes(kind):
    model, batch = build(kind)
    with torch.no_grad():
        expected, got = separate_logits(model, batch), reused_logits(model, batch)
    assert len(got) == 3
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, atol=1e-6, rtol=0)
    # the views really are unimodal: they differ from the full input's logits
    assert not torch.allclose(got[1], got[0]) and not torch.allclose(got[2], got[0])


@pytest.mark.parametrize("kind", MODELS)
def test_gradients_are_the_sum_of_the_separate_passes(kind):
    model, batch = build(kind)
    reference = copy.deepcopy(model)
    labels = batch["labels"]
    for logits in separate_logits(reference, batch):  # one backward per pass: autograd sums the gradients
        F.cross_entropy(logits, labels).backward()
    summed_loss(reused_logits(model, batch), labels).backward()
    parameters = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        want = parameters[name].grad
        assert (parameter.grad is None) == (want is None), name
        if want is not None:
            torch.testing.assert_close(parameter.grad, want, atol=1e-6, rtol=0, msg=name)
    towers = [p.grad for n, p in model.named_parameters() if "tower" in n or "encoder" in n]
    assert towers and all(grad is not None for grad in towers)


def batch_norms(model) -> dict[str, torch.nn.BatchNorm2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_resnet_step_equal_but_batch_norm_statistics_updated_once():
    """After one SGD step the weights agree; each batch-norm layer's running statistics took one update
    (reuse: the image tower ran once) instead of two (separate: on x and on x_image), by the formula
    ``r <- (1 - momentum) r + momentum * batch statistic`` with the unbiased variance. (SGD, not Adam: Adam
    divides by the gradient's own scale, which turns the float noise of gradients that are zero in exact
    arithmetic, such as the attention key biases', into full-size steps of either sign.)"""
    model, batch = build("resnet")
    reference = copy.deepcopy(model)
    stem = "multimodal_transformer.image_encoder.embedder.embedder.normalization"
    captured = []
    batch_norms(model)[stem].register_forward_hook(
        lambda module, args, out: captured.append(args[0].detach())
    )
    labels = batch["labels"]
    for net, compute in ((reference, separate_logits), (model, reused_logits)):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        summed_loss(compute(net, batch), labels).backward()
        optimizer.step()
    for (name, parameter), want in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(parameter, want, atol=1e-6, rtol=0, msg=name)

    (stem_input,) = captured  # the stem normalisation ran once in the reuse path
    momentum = batch_norms(model)[stem].momentum
    mean = stem_input.mean(dim=(0, 2, 3))
    var = stem_input.var(dim=(0, 2, 3), unbiased=True)
    once, twice = batch_norms(model)[stem], batch_norms(reference)[stem]
    torch.testing.assert_close(once.running_mean, momentum * mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(once.running_var, (1 - momentum) + momentum * var, atol=1e-6, rtol=0)
    kept = (1 - momentum) ** 2
    torch.testing.assert_close(twice.running_mean, (1 - kept) * mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(twice.running_var, kept + (1 - kept) * var, atol=1e-6, rtol=0)
    reference_norms = batch_norms(reference)
    assert len(reference_norms) > 1
    for name, norm in batch_norms(model).items():
        assert norm.num_batches_tracked.item() == 1 and reference_norms[name].num_batches_tracked.item() == 2
        assert not torch.allclose(norm.running_mean, reference_norms[name].running_mean)


@pytest.mark.parametrize("kind", ["vit", "clip"])
def test_tower_outputs_and_inputs_together_or_unknown_modalities_are_refused(kind):
    model, batch = build(kind)
    towers = model(**inputs_of(batch), return_tower_outputs=True).tower_outputs
    with pytest.raises(ValueError, match="either `tower_outputs` or the inputs"):
        model(pixel_values=batch["pixel_values"], tower_outputs={"text": towers["text"]})
    with pytest.raises(ValueError, match="`tower_outputs` must map some of this model's modalities"):
        model(tower_outputs={"audio": towers["text"]})
    assert model(**inputs_of(batch)).tower_outputs is None  # only when asked for


def test_registry_marks_the_architectures_with_separate_towers():
    qualify = {name: reuses_towers(SimpleNamespace(model_type=name)) for name in ARCHITECTURES}
    assert qualify == {
        "msd_multimodal_transformer": True,
        "msd_dual_encoder": True,
        "vilt": False,
        "bridgetower": False,
        "visual_bert": False,
        "lxmert": False,
    }
    model, _ = build("vit")
    assert reuses_towers(model, default_modalities(model))
    # another removal changes what the image tower sees: separate passes
    filled = [default_modalities(model)[0], Modality("image", keys=["pixel_values"], removal="fill")]
    assert not reuses_towers(model, filled)


# ---- MSDTrainer: the student's and the online teacher's views from the towers ------------------------------

WEIGHTINGS = ["uniform", "population", "instance", "learned"]


def msd_trainer(tmp_path, weighting: str, tower_reuse: bool, kind: str) -> tuple[MSDTrainer, dict]:
    """A fusion-transformer teacher (online) and a student of ``kind``, on 8 rows of a tiny batch."""
    student, batch = build(kind, seed=1)
    torch.manual_seed(0)
    teacher = MultimodalTransformerForSequenceClassification(
        student.config if kind == "resnet" else tiny_config()
    )
    batch = tiny_batch(teacher.config, batch_size=8, labels="single_label_classification")
    rows = [{key: value[i] for key, value in batch.items()} for i in range(8)]
    args = MSDTrainingArguments(
        output_dir=str(tmp_path),
        temperature=2.0,
        hard_label_weight=0.3,
        kd_loss_weight=0.7,
        modality_loss_weight=0.4,
        modality_weighting=weighting,
        tower_reuse=tower_reuse,
        per_device_train_batch_size=4,
        meta_update_interval=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher.eval(),
        args=args,
        train_dataset=rows,
        eval_dataset=rows,
        data_collator=stack_collate,
    )
    return trainer, stack_collate(rows[:4])


def tower_calls(model) -> list[int]:
    """A counter of the text tower's forward calls (one per pass that runs the towers)."""
    calls = []
    model.multimodal_transformer.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize(
    "weighting, kind", [*((w, "vit") for w in WEIGHTINGS), ("uniform", "resnet"), ("learned", "resnet")]
)
def test_msd_loss_gradients_and_meta_step_equal_separate_passes(tmp_path, weighting, kind):
    """The MSD loss of a step and its gradients (and, for learned weights, the weights after a meta step)
    with tower reuse equal those of separate passes; the student's and the teacher's towers run once per
    step instead of once per pass (the text tower: on x only, instead of on x and x_text)."""
    results = {}
    for reuse in (True, False):
        trainer, batch = msd_trainer(tmp_path / str(reuse), weighting, reuse, kind)
        if weighting == "population":
            trainer._set_population_saliency()
        if weighting == "learned":
            trainer._start_meta_batches()
        model = trainer.model.train()
        student_calls, teacher_calls = tower_calls(model), tower_calls(trainer.teacher.model)
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        counts = (len(student_calls), len(teacher_calls))
        weights = None
        if weighting == "learned":
            model.zero_grad()
            trainer._meta_step(model, dict(batch))
            weights = [p.detach().clone() for p in trainer.weighting.parameters()]
        results[reuse] = loss.detach(), grads, counts, weights
    (loss, grads, counts, weights), (want_loss, want_grads, want_counts, want_weights) = (
        results[True],
        results[False],
    )
    torch.testing.assert_close(loss, want_loss, atol=1e-6, rtol=0)
    assert grads.keys() == want_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], atol=1e-6, rtol=0, msg=name)
    assert counts == (1, 1) and want_counts == (2, 2)
    if weighting == "learned":
        assert weights and not torch.equal(
            weights[0], torch.ones_like(weights[0])
        )  # the meta step moved them
        for got, want in zip(weights, want_weights):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
