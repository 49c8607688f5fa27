"""Frozen modules stay as they were while the rest of a model trains.

Freezing parameters (``requires_grad=False``, as PEFT does to a LoRA model's base, or a user to a pretrained
image tower) does not freeze the *running statistics* of batch normalisation: in train mode every forward
pass moves ``running_mean`` / ``running_var``. A frozen ResNet tower would then leave training changed,
and an adapter saved without those buffers would not reload to the trained model. The trainers keep such
layers in eval mode while they train.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from torch import nn

#: model -> (its number of modules and its parameters' ``requires_grad`` flags, the frozen normalisation
#: layers they make): the layers are found again when a module is added or a flag changes, not at every step.
_FROZEN_NORMALIZATION: WeakKeyDictionary[nn.Module, tuple[tuple[int | bool, ...], list[nn.Module]]] = (
    WeakKeyDictionary()
)


def _tracks_running_stats(module: nn.Module) -> bool:
    return getattr(module, "track_running_stats", False) and getattr(module, "running_mean", None) is not None


def _frozen(module: nn.Module, inherited: bool) -> bool:
    """Whether every parameter of ``module`` (and its children) is frozen; ``inherited`` (the enclosing
    module's answer) when it has none, e.g. a BatchNorm without affine parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    return not any(flags) if flags else inherited


def keep_frozen_normalization_in_eval(model: nn.Module) -> None:
    """Put every normalisation layer with running statistics (BatchNorm, InstanceNorm with
    ``track_running_stats``) whose parameters are all frozen into eval mode, so training leaves its
    statistics unchanged. A layer that trains keeps them updating. Nothing happens when ``model`` is not
    training; ``model.train()`` undoes it, so call it after each ``train()`` (the trainers do, per batch).
    The layers are looked up again when a module is added or a ``requires_grad`` changes (it runs every
    step)."""
    if not model.training:
        return
    modules = list(model.modules())
    flags = (
        len(modules),
        *(p.requires_grad for m in modules for p in m._parameters.values() if p is not None),
    )
    known = _FROZEN_NORMALIZATION.get(model)
    if known is None or known[0] != flags:
        found: list[nn.Module] = []
        _walk(model, False, found)
        known = _FROZEN_NORMALIZATION[model] = (flags, found)
    for module in known[1]:
        module.eval()


def _walk(module: nn.Module, inherited: bool, found: list[nn.Module]) -> None:
    frozen = _frozen(module, inherited)
    if _tracks_running_stats(module) and frozen:
        found.append(module)
        return
    for child in module.children():
        _walk(child, frozen, found)
