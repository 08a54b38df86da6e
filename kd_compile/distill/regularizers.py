"""TRADE's orthogonality regulariser: which layers it applies to and its penalty.

The penalty ``||W W^T - I||_F^2`` keeps the 1x1 convolutions and transformer FFN layers of a
student near-orthogonal (TRADE Eq. 4); ``train_student`` adds it with ``TrainConfig.orth_weight``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["orthogonal_modules", "orthogonality_penalty"]

# class names (lower-cased substrings) of transformer feed-forward blocks whose Linear layers
# get the orthogonality penalty: timm's Mlp/GluMlp/SwiGLU, torchvision's MLPBlock, and the
# common hand-written names
_FFN_NAMES = ("mlp", "ffn", "feedforward", "feed_forward", "swiglu")


def orthogonal_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers TRADE regularises: 1x1 convolutions and Linear layers of transformer FFNs.

    Selected: ``nn.Conv2d`` with a 1x1 kernel and ``groups == 1`` (depthwise 1x1 filters have
    a single input and no matrix to orthogonalise); ``nn.Linear`` whose parent module is a
    feed-forward block (class name containing mlp/ffn/feedforward/swiglu, as in timm's ``Mlp``)
    or is ``linear1``/``linear2`` of ``nn.TransformerEncoderLayer``/``DecoderLayer``; and any
    module with a weight whose attribute ``kd_orthogonal`` is True (an opt-in for student
    spaces). TRADE found the penalty on 3x3 convs and classifier heads to hurt, so those are
    left out.
    """
    chosen: list[tuple[str, nn.Module]] = []
    for parent_name, parent in model.named_modules():
        pname = type(parent).__name__.lower()
        is_ffn = any(k in pname for k in _FFN_NAMES)
        is_tlayer = isinstance(parent, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
        for child_name, child in parent.named_children():
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if getattr(child, "kd_orthogonal", False) and isinstance(getattr(child, "weight", None), torch.Tensor):
                chosen.append((full, child))
            elif isinstance(child, nn.Conv2d):
                if tuple(child.kernel_size) == (1, 1) and child.groups == 1:
                    chosen.append((full, child))
            elif isinstance(child, nn.Linear) and (is_ffn or (is_tlayer and child_name in ("linear1", "linear2"))):
                chosen.append((full, child))
    return chosen


def _orth_term(weight: torch.Tensor) -> torch.Tensor:
    w = weight.reshape(weight.shape[0], -1)
    # the smaller Gram matrix: W W^T when rows <= cols (rows can be orthonormal), else W^T W
    gram = w @ w.t() if w.shape[0] <= w.shape[1] else w.t() @ w
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return (gram - eye).pow(2).sum()


def orthogonality_penalty(model: nn.Module, modules: list[tuple[str, nn.Module]] | None = None) -> torch.Tensor:
    """TRADE's orthogonality regulariser: mean over layers of ``||W W^T - I||_F^2``.

    Each weight is reshaped to (C_out, C_in * kH * kW) and the smaller of its two Gram
    matrices is compared with the identity (TRADE Eq. 4, averaged over ``|W|`` layers).

    Args:
        model: the student.
        modules: the layers to use; default ``orthogonal_modules(model)`` (pass the list to
            avoid walking the module tree every step).

    Returns:
        0-d tensor (0 when there is no such layer), differentiable in the weights.
    """
    mods = orthogonal_modules(model) if modules is None else modules
    if not mods:
        p = next(iter(model.parameters()), None)
        return torch.zeros((), device=p.device if p is not None else "cpu")
    terms = [_orth_term(m.weight) for _, m in mods]  # type: ignore[arg-type]
    return torch.stack(terms).mean()
