"""``torch_compile=True`` with the distillation trainers: one compiled forward serves every input signature.

``Trainer`` compiles the student (and accelerate the teacher) with ``torch.compile``. A distillation step
calls the compiled forward on several input signatures: the full input and, with MSD, each modality-only
input (other keys, other shapes), with grad for the student and without for the teacher, and in eval mode
for evaluation. Teacher and student of one class share one code object, hence one dynamo cache. These helpers
keep that to one graph per signature: the batch (and token) dimensions are marked dynamic up front, so a
new batch size or padded length does not recompile, and the recompile limit leaves room for every signature.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..recompile_limit import RECOMPILE_LIMIT, allow_recompiles

__all__ = ["RECOMPILE_LIMIT", "allow_recompiles", "mark_batch_dynamic", "uncompiled"]


def mark_batch_dynamic(inputs: dict[str, Any]) -> dict[str, Any]:
    """Mark dim 0 (batch) of every tensor in ``inputs``, and dim 1 of 2-D integer tensors (token ids and
    masks, padded to each batch's longest), as dynamic for ``torch.compile`` (a no-op in eager mode)."""
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            torch._dynamo.maybe_mark_dynamic(value, 0)
            if value.dim() == 2 and not value.is_floating_point():
                torch._dynamo.maybe_mark_dynamic(value, 1)
    return inputs


def uncompiled(module: nn.Module) -> nn.Module:
    """The module under a ``torch.compile`` wrapper (itself if not compiled): for one-off calls (input checks
    on a single example) that should not add a graph to the compiled forward's cache, and for the learned
    weights' meta step, whose second-order gradients compiled graphs do not provide."""
    return getattr(module, "_orig_mod", module)
