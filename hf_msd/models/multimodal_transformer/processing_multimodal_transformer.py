"""Processor of the multimodal fusion transformer: a tokenizer and an image processor behind one call.

This file imports only transformers so that a saved folder loads with `trust_remote_code=True` where hf_msd is
not installed.
"""

from transformers import BatchFeature, ProcessorMixin


class MultimodalTransformerProcessor(ProcessorMixin):
    r"""
    Turns `(images, text)` into the inputs of [`MultimodalTransformerForSequenceClassification`]: `input_ids`,
    `attention_mask`, `token_type_ids` (from the tokenizer) and `pixel_values` (from the image processor).
    Either modality may be missing, so the same processor serves the multimodal model and both unimodal
    students. Saved and loaded like any transformers processor (`save_pretrained` writes the tokenizer files
    and `processor_config.json`, which holds the image processor's settings).

    Args:
        image_processor ([`BaseImageProcessor`]): e.g. a `ViTImageProcessor` sized to `config.image_size`.
        tokenizer ([`PreTrainedTokenizerBase`]): the text tower's tokenizer.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            images: a PIL image, array or tensor, or a list of them (one per example), or None.
            text: a string or a list of strings (one per example), or None.
            return_tensors, padding, truncation, max_length: passed to the tokenizer (`return_tensors` also to
                the image processor).
            kwargs: passed to the image processor (e.g. `do_resize=False`).

        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask`, `token_type_ids` (B, L_t) when `text` is
            given and `pixel_values` (B, num_channels, H, W) when `images` are given.
        """
        if images is None and text is None:
            raise ValueError("Pass `images`, `text` or both to MultimodalTransformerProcessor.")
        data = {}
        if text is not None:
            encoding = self.tokenizer(
                text,
                return_tensors=return_tensors,
                padding=padding,
                truncation=truncation,
                max_length=max_length,
            )
            data.update(encoding)
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))


__all__ = ["MultimodalTransformerProcessor"]
