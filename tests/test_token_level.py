"""Token-level distillation (causal LMs, token classifiers) against hand computations.

The reference: per position ``T^2 * KL(softmax(t / T) || softmax(s / T))`` written out with ``log_softmax``,
averaged over the positions that have a label (-100 masked out), after the causal shift for a causal LM
(logits at t against the label at t + 1); the task term is the model's own loss.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForTokenClassification, LlamaConfig, LlamaForCausalLM

from hf_msd.trainers import DistillationTrainer
from tests.helpers.distillation import make_args

VOCAB, LENGTH = 24, 7


def tiny_llama(hidden: int, layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def tiny_token_classifier(hidden: int, layers: int, seed: int) -> BertForTokenClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=16,
        num_labels=5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForTokenClassification(config)


def batch(n: int = 8, seed: int = 0, num_classes: int | None = None) -> dict[str, torch.Tensor]:
    """Sequences with a 2-token prompt (label -100) and right padding (mask 0, label -100); the labels are the
    tokens themselves (causal LM) or a class per token (``num_classes``)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
    lengths = torch.randint(4, LENGTH + 1, (n,), generator=generator)
    attention_mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask
    labels = input_ids % num_classes if num_classes else input_ids.clone()
    labels[:, :2] = -100
    labels[attention_mask == 0] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def hand_kd(student_logits, teacher_logits, labels, temperature, causal):
    if causal:
        student_logits, teacher_logits, labels = student_logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    teacher_log_p = torch.log_softmax(teacher_logits / temperature, dim=-1)
    student_log_p = torch.log_softmax(student_logits / temperature, dim=-1)
    kl = (teacher_log_p.exp() * (teacher_log_p - student_log_p)).sum(-1)
    return temperature**2 * kl[mask].mean()


def hand_ce(logits, labels, causal):
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    return torch.nn.functional.cross_entropy(logits[mask], labels[mask])


def make_trainer(tmp_path, student, teacher, **overrides) -> DistillationTrainer:
    """The shared fast SGD arguments with T = 2 and weights 0.3 (task) / 0.7 (KD)."""
    arguments = dict(temperature=2.0, hard_label_weight=0.3, kd_loss_weight=0.7, learning_rate=0.05)
    args = make_args(tmp_path, **{**arguments, **overrides})
    return DistillationTrainer(model=student, teacher_model=teacher, args=args)


@pytest.mark.parametrize("kind", ["causal", "tokens"])
def test_token_level_loss_matches_the_hand_computation(tmp_path, kind):
    if kind == "causal":
        student, teacher = tiny_llama(16, 1, seed=1), tiny_llama(32, 2, seed=2)
        inputs = batch()
    else:
        student, teacher = tiny_token_classifier(16, 1, seed=1), tiny_token_classifier(32, 2, seed=2)
        inputs = batch(num_classes=5)
    trainer = make_trainer(tmp_path, student, teacher)
    student.eval()
    loss = trainer.compute_loss(student, dict(inputs))
    with torch.no_grad():
        s = student(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        t = teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    causal = kind == "causal"
    expected = 0.3 * hand_ce(s, inputs["labels"], causal) + 0.7 * hand_kd(s, t, inputs["labels"], 2.0, causal)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_causal_lm_gradient_accumulation_4x2_equals_batch_8(tmp_path):
    """One optimizer step on 8 sequences with different numbers of labelled tokens: 4 micro-batches of 2 give
    the same update as one batch of 8 (both terms are means over the labelled tokens of the whole batch)."""
    data = batch(n=8, seed=3)
    rows = [{key: value[i] for key, value in data.items()} for i in range(8)]
    teacher = tiny_llama(32, 2, seed=2)
    results = []
    for per_device, accumulation in ((8, 1), (2, 4)):
        student = tiny_llama(16, 1, seed=1)
        trainer = make_trainer(
            tmp_path / f"{per_device}",
            student,
            copy.deepcopy(teacher),
            per_device_train_batch_size=per_device,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
        )
        trainer.train_dataset = rows
        trainer.train()
        results.append(dict(student.named_parameters()))
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_3d_logits_of_an_unknown_model_are_refused_by_name(tmp_path):
    class Unknown(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(VOCAB, VOCAB)

        def forward(self, input_ids, attention_mask=None):
            return {"logits": self.embedding(input_ids)}

    student, teacher = Unknown(), Unknown()
    trainer = make_trainer(tmp_path, student, teacher, hard_label_weight=0.0)
    inputs = batch()
    inputs.pop("labels")
    with pytest.raises(ValueError, match="token-level logits"):
        trainer.compute_loss(student, inputs)
