"""The multimodal-classification pipeline (hf_msd/pipelines), a text student in text-classification, what a
saved model carries for remote code (auto_map, custom_pipelines) and plain logits from Trainer.predict."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from transformers import Trainer, TrainingArguments, pipeline

from hf_msd.pipelines import TASK, MultimodalClassificationPipeline, add_pipeline_code
from tests.helpers.models import (
    TINY_WORDS,
    hand_truncated_ids,
    tiny_images,
    tiny_model,
    tiny_tokenizer,
    tiny_vilt,
    tiny_vilt_processor,
)

LABELS = {0: "red", 1: "green", 2: "blue"}
QUESTIONS = ["what color is the shape?", "is there a red circle in the image?", "what shape is it?"]


def _labelled(modalities=("text", "image"), **kwargs):
    return tiny_model(modalities, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **kwargs)


def _expected(model, processor, image=None, text=None, function="softmax"):
    """[(label, score)] best first, from the processor and the model called by hand."""
    inputs = processor(images=None if image is None else [image], text=None if text is None else [text])
    with torch.no_grad():
        logits = model(**inputs).logits[0].double()
    scores = torch.softmax(logits, -1) if function == "softmax" else torch.sigmoid(logits)
    order = torch.argsort(scores, descending=True)
    return [(model.config.id2label[int(i)], scores[i].item()) for i in order]


def _pairs(output):
    return [(entry["label"], entry["score"]) for entry in output]


def _assert_matches(output, expected, top_k=None):
    expected = expected[:top_k] if top_k else expected
    assert [label for label, _ in _pairs(output)] == [label for label, _ in expected]
    np.testing.assert_allclose([s for _, s in _pairs(output)], [s for _, s in expected], atol=1e-6)


def test_multimodal_student_softmax_scores_top_k_and_batching(processor):
    model = _labelled()
    pipe = pipeline(TASK, model=model, processor=processor)
    assert isinstance(pipe, MultimodalClassificationPipeline)
    images = tiny_images(3, size=20)
    expected = [_expected(model, processor, image, text) for image, text in zip(images, QUESTIONS)]
    # One input: every label, best first; top_k limits it.
    _assert_matches(pipe({"image": images[0], "text": QUESTIONS[0]}), expected[0])
    _assert_matches(pipe(image=images[0], text=QUESTIONS[0], top_k=2), expected[0], top_k=2)
    assert sum(
        score for _, score in _pairs(pipe({"image": images[0], "text": QUESTIONS[0]}, top_k=None))
    ) == (pytest.approx(1.0))
    # A list, batched (questions of different lengths are padded): the same answers as one by one.
    inputs = [{"image": image, "text": text} for image, text in zip(images, QUESTIONS)]
    for batch_size in (2, 3):
        outputs = pipe(inputs, batch_size=batch_size)
        for output, reference in zip(outputs, expected):
            _assert_matches(output, reference)


def test_image_as_path_or_array_gives_the_same_answer(processor, tmp_path):
    model = _labelled()
    pipe = pipeline(TASK, model=model, processor=processor)
    image = tiny_images(1, size=20)[0]
    image.save(tmp_path / "shape.png")
    expected = _expected(model, processor, image, QUESTIONS[0])
    for source in (str(tmp_path / "shape.png"), tmp_path / "shape.png", np.asarray(image)):
        _assert_matches(pipe({"image": source, "text": QUESTIONS[0]}), expected)


def test_grayscale_and_rgba_arrays_are_converted_as_pil_converts_them(processor, tmp_path):
    # A saved folder, so the pipeline code is the copy that travels with the model (remote code).
    model = _labelled()
    pipeline(TASK, model=model, processor=processor).save_pretrained(tmp_path)
    pipe = pipeline(model=str(tmp_path), trust_remote_code=True)
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    rgba = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    # Each array and the PIL image it stands for; PIL's convert("RGB") is the reference conversion.
    cases = [
        (gray, Image.fromarray(gray)),
        (gray[:, :, None], Image.fromarray(gray)),
        (torch.from_numpy(gray)[None], Image.fromarray(gray)),
        (rgba, Image.fromarray(rgba)),
        (torch.from_numpy(rgba).permute(2, 0, 1), Image.fromarray(rgba)),
    ]
    for array, image in cases:
        assert image.mode in ("L", "RGBA")
        expected = _expected(model, processor, image.convert("RGB"), QUESTIONS[0])
        _assert_matches(pipe({"image": array, "text": QUESTIONS[0]}), expected)
    outputs = pipe([{"image": array, "text": QUESTIONS[0]} for array, _ in cases], batch_size=2)
    for output, (_, image) in zip(outputs, cases):
        _assert_matches(output, _expected(model, processor, image.convert("RGB"), QUESTIONS[0]))
    # Other channel counts and dimensions are refused before the model runs, naming the input.
    for shape in ((20, 24, 2), (5, 20, 24), (20,), (1, 20, 24, 3)):
        inputs = [{"image": gray, "text": "a"}, {"image": np.zeros(shape, np.uint8), "text": "a"}]
        with pytest.raises(ValueError, match=r"input 1: 'image' array has shape \(.*\(H, W\) grayscale"):
            pipe(inputs)


def test_a_question_longer_than_the_model_takes_is_cut_to_its_positions(processor):
    # tiny_tokenizer() has no model_max_length: only the model's max_position_embeddings bounds the text.
    assert processor.tokenizer.model_max_length > 10**20
    words = [TINY_WORDS[i] for i in np.random.default_rng(2).integers(0, len(TINY_WORDS), 10_000)]
    question, image = " ".join(words), tiny_images(1)[0]
    pixel_values = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    # The processor's path (text + image) and the tokenizer's path (a text-only model, no processor).
    for model, image_inputs in ((_labelled(), {"pixel_values": pixel_values}), (_labelled(("text",)), {})):
        if image_inputs:
            pipe = pipeline(TASK, model=model, processor=processor)
        else:
            pipe = MultimodalClassificationPipeline(model=model, tokenizer=processor.tokenizer)
            assert pipe.processor is None
        # Reference: the question cut by hand to max_position_embeddings tokens ([CLS] + words + [SEP]).
        ids = hand_truncated_ids(words, model.config.text_config.max_position_embeddings)
        with torch.no_grad():
            logits = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                token_type_ids=torch.zeros_like(ids),
                **image_inputs,
            ).logits[0]
        scores = torch.softmax(logits.double(), -1)
        expected = [(LABELS[int(i)], scores[i].item()) for i in torch.argsort(scores, descending=True)]
        inputs = {"image": image, "text": question} if image_inputs else {"text": question}
        _assert_matches(pipe(inputs), expected)
        for output in pipe([inputs, inputs], batch_size=2):
            _assert_matches(output, expected)


def test_unimodal_students(processor):
    text_model, image_model = _labelled(("text",)), _labelled(("image",))
    text_pipe = pipeline(TASK, model=text_model, processor=processor)
    expected = _expected(text_model, processor, text=QUESTIONS[1])
    _assert_matches(text_pipe({"text": QUESTIONS[1]}), expected)
    _assert_matches(text_pipe(QUESTIONS[1]), expected)  # one modality: the bare value
    image = tiny_images(1)[0]
    image_pipe = pipeline(TASK, model=image_model, processor=processor)
    _assert_matches(image_pipe({"image": image}), _expected(image_model, processor, image=image))
    outputs = image_pipe([image, image], batch_size=2)
    assert len(outputs) == 2
    _assert_matches(outputs[1], _pairs(outputs[0]))


def test_multi_label_student_uses_sigmoid(processor):
    model = _labelled(problem_type="multi_label_classification")
    pipe = pipeline(TASK, model=model, processor=processor)
    image = tiny_images(1)[0]
    expected = _expected(model, processor, image, QUESTIONS[0], function="sigmoid")
    _assert_matches(pipe({"image": image, "text": QUESTIONS[0]}), expected)
    softmax = _expected(model, processor, image, QUESTIONS[0], function="softmax")
    _assert_matches(pipe({"image": image, "text": QUESTIONS[0]}, function_to_apply="softmax"), softmax)


def test_vilt_sigmoid_scores_and_batches_of_different_image_sizes(tmp_path):
    model, processor = tiny_vilt(), tiny_vilt_processor(tmp_path)
    pipe = pipeline(TASK, model=model, processor=processor)
    assert pipe.modalities == ["image", "text"]
    rng = np.random.default_rng(0)
    # Non-square images: ViLT's processor keeps the aspect ratio, so the two differ in size.
    images = [
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in ((32, 48, 3), (48, 32, 3))
    ]
    expected = []
    for image, text in zip(images, QUESTIONS):
        inputs = processor(images=[image], text=[text], return_tensors="pt")
        with torch.no_grad():
            scores = torch.sigmoid(model(**inputs).logits[0].double())
        order = torch.argsort(scores, descending=True)
        expected.append([(model.config.id2label[int(i)], scores[i].item()) for i in order])
    inputs = [{"image": image, "text": text} for image, text in zip(images, QUESTIONS)]
    for output, reference in zip(pipe(inputs, batch_size=1), expected):
        _assert_matches(output, reference)
    for output, reference in zip(pipe(inputs, batch_size=2), expected):
        # Padding to the larger image is masked by pixel_mask: ViLT sees the same pixels.
        assert [label for label, _ in _pairs(output)] == [label for label, _ in reference]
        np.testing.assert_allclose([s for _, s in _pairs(output)], [s for _, s in reference], atol=1e-4)


def test_bad_inputs_name_the_input(processor, tmp_path):
    pipe = pipeline(TASK, model=_labelled(), processor=processor)
    image = tiny_images(1)[0]
    with pytest.raises(ValueError, match=r"input 1 has no 'image', which this model needs"):
        pipe([{"image": image, "text": "a"}, {"text": "b"}])
    with pytest.raises(TypeError, match=r"the input: 'text' must be a str, got int"):
        pipe({"image": image, "text": 5})
    with pytest.raises(TypeError, match=r"'image' must be a PIL image, a path or URL, or an array, got list"):
        pipe({"image": [1, 2], "text": "a"})
    with pytest.raises(ValueError, match=r"unknown keys \['question'\]"):
        pipe({"image": image, "question": "a"})
    with pytest.raises(TypeError, match=r"the input is a str; this model takes \['image', 'text'\]"):
        pipe("what color?")
    with pytest.raises(ValueError, match=r"'image' '.*missing.png' is not a file"):
        pipe({"image": str(tmp_path / "missing.png"), "text": "a"})
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"'image' '.*broken.png' could not be read as an image"):
        pipe({"image": str(tmp_path / "broken.png"), "text": "a"})
    with pytest.raises(ValueError, match=r"'image' array has shape \(2, 2, 2, 2\)"):
        pipe({"image": np.zeros((2, 2, 2, 2)), "text": "a"})
    text_pipe = pipeline(TASK, model=_labelled(("text",)), processor=processor)
    with pytest.raises(ValueError, match=r"has \['image'\], which this model does not take"):
        text_pipe({"image": image, "text": "a"})


def test_text_classification_serves_a_text_student():
    tokenizer = tiny_tokenizer()
    # A text-only student is a text classifier: the same answer as the model called by hand.
    text_model = _labelled(("text",))
    answer = pipeline("text-classification", model=text_model, tokenizer=tokenizer)(
        "what color is the shape?"
    )
    inputs = tokenizer(["what color is the shape?"], return_tensors="pt")
    with torch.no_grad():
        probabilities = torch.softmax(text_model(**inputs).logits[0], -1)
    assert answer[0]["label"] == LABELS[int(probabilities.argmax())]
    assert answer[0]["score"] == pytest.approx(probabilities.max().item(), abs=1e-6)


def test_saved_student_names_its_remote_code_and_pipeline(processor, tmp_path):
    model = _labelled()
    # The model alone names its code (auto_map), not a pipeline: that is the pipeline's to save.
    model.save_pretrained(tmp_path / "model")
    assert "custom_pipelines" not in json.loads((tmp_path / "model" / "config.json").read_text())
    pipeline(TASK, model=model, processor=processor).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_multimodal_transformer.MultimodalTransformerConfig",
        "AutoModel": "modeling_multimodal_transformer.MultimodalTransformerModel",
        "AutoModelForSequenceClassification": (
            "modeling_multimodal_transformer.MultimodalTransformerForSequenceClassification"
        ),
        "AutoProcessor": "processing_multimodal_transformer.MultimodalTransformerProcessor",
    }
    assert config["custom_pipelines"] == {
        TASK: {
            "impl": "multimodal_classification.MultimodalClassificationPipeline",
            "pt": ["AutoModelForSequenceClassification"],
            "type": "multimodal",
        }
    }
    for name in ("configuration", "modeling", "processing"):
        assert (tmp_path / f"{name}_multimodal_transformer.py").is_file()
    # The pipeline file imports nothing of hf_msd (it must run where hf_msd is not installed).
    source = (tmp_path / "multimodal_classification.py").read_text()
    imported = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.startswith(("import ", "from ")) and not line.startswith("from __future__")
    }
    assert imported <= {"inspect", "os", "collections", "typing", "numpy", "PIL", "torch", "transformers"}
    # pipeline(model=folder): the task comes from custom_pipelines; the code from the folder.
    pipe = pipeline(model=str(tmp_path), trust_remote_code=True)
    image = tiny_images(1)[0]
    _assert_matches(
        pipe({"image": image, "text": QUESTIONS[0]}), _expected(model, processor, image, QUESTIONS[0])
    )


def test_trainer_predict_returns_plain_logits(processor, tmp_path):
    model = _labelled()
    images = tiny_images(3)
    features = processor(images=images, text=QUESTIONS)
    dataset = Dataset.from_dict({k: v.tolist() for k, v in features.items()} | {"labels": [0, 1, 2]})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=3, report_to=[])
    predictions = Trainer(model=model, args=args).predict(dataset).predictions
    assert isinstance(predictions, np.ndarray) and predictions.shape == (3, 3)
    with torch.no_grad():
        logits = model(**features).logits
    np.testing.assert_allclose(predictions, logits.numpy(), atol=1e-5)
    # Extra outputs only when asked for: the mask comes with hidden states.
    assert model(**features).hidden_states_mask is None
    assert model(**features, output_hidden_states=True).hidden_states_mask.shape[0] == 3


def test_pipeline_code_added_to_a_saved_folder_is_what_the_pipeline_saves(processor, tmp_path):
    # Trainer.save_model writes the model alone; add_pipeline_code completes the folder as
    # Pipeline.save_pretrained (transformers' own save path) would have.
    model = _labelled()
    pipeline(TASK, model=model, processor=processor).save_pretrained(tmp_path / "by_pipeline")
    model = _labelled()  # a fresh config: the pipeline's save wrote custom_pipelines into the first one
    model.save_pretrained(tmp_path / "by_model")
    processor.save_pretrained(tmp_path / "by_model")
    add_pipeline_code(tmp_path / "by_model")
    by_pipeline, by_model = (
        json.loads((tmp_path / name / "config.json").read_text()) for name in ("by_pipeline", "by_model")
    )
    assert by_model["custom_pipelines"] == by_pipeline["custom_pipelines"]
    assert (tmp_path / "by_model" / "multimodal_classification.py").read_text() == (
        tmp_path / "by_pipeline" / "multimodal_classification.py"
    ).read_text()
    pipe = pipeline(model=str(tmp_path / "by_model"), trust_remote_code=True)
    assert pipe.task == TASK
    image = tiny_images(1)[0]
    _assert_matches(
        pipe({"image": image, "text": QUESTIONS[1]}), _expected(model, processor, image, QUESTIONS[1])
    )


def test_compiled_pipeline_gives_the_eager_answers_and_keeps_the_model(processor):
    """pipeline(..., compile=True): the model runs through torch.compile (inductor), one input and a batch
    of questions of different lengths give the eager scores, and the pipeline's model is still the model."""
    torch._dynamo.reset()
    model = _labelled()
    pipe = pipeline(TASK, model=model, processor=processor, compile=True)
    assert pipe.model is model and type(pipe.forward_model).__name__ == "OptimizedModule"
    images = tiny_images(3, size=20)
    expected = [_expected(model, processor, image, text) for image, text in zip(images, QUESTIONS)]
    _assert_matches(pipe({"image": images[0], "text": QUESTIONS[0]}), expected[0])
    inputs = [{"image": image, "text": text} for image, text in zip(images, QUESTIONS)]
    for output, reference in zip(pipe(inputs, batch_size=3), expected):
        _assert_matches(output, reference)
    torch._dynamo.reset()
