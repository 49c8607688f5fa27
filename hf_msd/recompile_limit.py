"""dynamo's recompile limit, raised wherever one compiled forward serves several input signatures: the
distillation trainers (:mod:`hf_msd.trainers.compilation`) and the compiled rows of the inference-speed timer
(:mod:`hf_msd.evaluation.speed`). Imports nothing of hf_msd."""

import torch

#: dynamo's per-code-object recompile limit while compiling (torch's default is 8): MSD on two modalities
#: needs up to 3 signatures x (student train, student eval, teacher) = 9 graphs of one forward.
RECOMPILE_LIMIT = 64


def allow_recompiles(limit: int = RECOMPILE_LIMIT) -> None:
    """Raise ``torch._dynamo.config.recompile_limit`` to at least ``limit`` (never lowers it)."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, limit)
