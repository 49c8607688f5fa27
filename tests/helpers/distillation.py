"""Tiny models and synthetic datasets for the distillation trainer tests (engineer B's helpers)."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification

from hf_msd.trainers import DistillationTrainingArguments

VOCAB = 64
SEQ_LEN = 8
NUM_LABELS = 3


def tiny_bert(
    hidden: int = 16, layers: int = 1, heads: int = 2, num_labels: int = NUM_LABELS, seed: int = 0, **kw
):
    """A BertForSequenceClassification with no dropout (deterministic training steps)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=SEQ_LEN,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
        **kw,
    )
    return BertForSequenceClassification(config)


def teacher_and_student(**student_kw):
    """A wider, deeper teacher (hidden 32, 2 layers, 4 heads) and a small student (hidden 16, 1 layer)."""
    teacher = tiny_bert(hidden=32, layers=2, heads=4, seed=1)
    student = tiny_bert(seed=2, **student_kw)
    return teacher, student


def token_dataset(
    n: int = 32, seed: int = 0, num_labels: int = NUM_LABELS, multi_label: bool = False
) -> Dataset:
    """Random token sequences with padding at the end of some rows; labels are a function of the tokens."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (n, SEQ_LEN), generator=generator)
    lengths = torch.randint(SEQ_LEN // 2, SEQ_LEN + 1, (n,), generator=generator)
    attention_mask = (torch.arange(SEQ_LEN)[None] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask
    if multi_label:
        labels = (input_ids[:, :num_labels] % 2).float()
    else:
        labels = input_ids[:, 0] % num_labels
    return Dataset.from_dict(
        {
            "input_ids": input_ids.tolist(),
            "attention_mask": attention_mask.tolist(),
            "labels": labels.tolist(),
        }
    )


def make_args(output_dir, **overrides) -> DistillationTrainingArguments:
    """Fast, deterministic CPU arguments: SGD, no shuffling effects on a single step, no reporting."""
    defaults = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    defaults.update(overrides)
    return DistillationTrainingArguments(**defaults)
