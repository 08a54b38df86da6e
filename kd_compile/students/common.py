"""Conventions the built-in student families share (``trade`` and ``cnn``).

Both families round channel choices the same way, keep the final feature map at least
``MIN_FINAL_SIDE`` wide, initialise weights explicitly, expose their stage outputs for feature
distillation (``feature_layers``), count parameters exactly without building, cross-checked
by a build on the meta device (``meta_param_count``), and are costed and exported in their
deployed form (``deployed``: re-parameterisable blocks folded).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from timm.layers import make_divisible, trunc_normal_
from torch import nn

from ..errors import UsageError
from ..search.space import Config

__all__ = [
    "MIN_FINAL_SIDE",
    "channel_choices",
    "conv_bn_params",
    "deployed",
    "feature_layers",
    "init_weights",
    "meta_param_count",
]

# Smallest side of the final feature map the stride rules aim for; 3x3 keeps some spatial
# structure for the Transformer tokens and the head while still pooling enough context.
MIN_FINAL_SIDE = 3


def channel_choices(base: Sequence[int], scale: float) -> tuple[int, ...]:
    """The channel choices ``base`` times ``scale``, as multiples of 8, sorted and distinct.

    Multiples of 8 as timm's ``make_divisible`` does for channels; duplicates from a small
    scale are merged so every choice is a distinct architecture.
    """
    return tuple(sorted({int(make_divisible(w * scale, 8)) for w in base}))


def init_weights(model: nn.Module) -> None:
    """EfficientNet-style fan-out init for convs and ViT-style small init for linears.

    Explicit so a student's starting point does not depend on PyTorch's default-init version;
    the weights are a deterministic function of the torch RNG state.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def feature_layers(model: nn.Module) -> list[str]:
    """Module names whose outputs are the stage feature maps (for feature distillation).

    Args:
        model: a student built by ``TradeSpace.build`` or ``CnnSpace.build``.

    Returns:
        Names usable with ``model.get_submodule``; each module outputs (N, C_i, H_i, W_i).

    Raises:
        UsageError: ``model`` was not built by a kd-compile space (no ``feature_names``).
    """
    names = getattr(model, "feature_names", None)
    if names is None:
        raise UsageError(
            f"{type(model).__name__} was not built by a kd-compile space (no feature_names)"
        )
    return list(names)


def conv_bn_params(cin: int, cout: int, k: int, groups: int = 1) -> int:
    """Parameters of a bias-free kxk conv (timm's default) followed by BatchNorm (weight, bias)."""
    return cin // groups * cout * k * k + 2 * cout


def meta_param_count(build: Callable[..., nn.Module], config: Config) -> int:
    """Parameter count of ``build(config, init=False)`` built on the meta device.

    The meta device allocates no memory, so the count is exact (the same code path as
    ``build``) and cheap; the explicit init is skipped because its dispatch on meta tensors
    took most of the time of the count.
    """
    with torch.device("meta"):
        model = build(config, init=False)
    return sum(p.numel() for p in model.parameters())


def deployed(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The inference form of ``model``: a folded deep copy, in eval mode (``model`` is untouched).

    Every re-parameterisable block is folded by timm's ``reparameterize_model`` (a RepVGG
    block's kxk, 1x1 and identity-BN branches become one kxk conv with bias; modules with
    ``fuse``/``switch_to_deploy`` are handled the same way). The copy computes what ``model``
    computes in eval mode (up to float rounding) with the layers that ship, so counts,
    latencies and the ONNX export are taken on it; the unfolded ``model`` is the one to train.
    Folding uses the BatchNorm running statistics, hence eval mode: a folded block has no
    BatchNorm left to train.

    Args:
        model: any module mapping (N, C, H, W) to (N, num_classes); one without foldable
            blocks comes back as an equal copy.
        inplace: fold ``model`` itself, no copy (for a model built only to be costed: the copy
            took a third of the proposal screen's time).

    Returns:
        A module with the same inputs and outputs as ``model`` (a new one unless ``inplace``).
    """
    from timm.utils.model import reparameterize_model

    # timm folds the children of the module it is given, so the model goes in a holder: a
    # foldable block passed on its own is folded too
    holder = nn.Sequential((model if inplace else copy.deepcopy(model)).eval())
    with torch.no_grad():  # folding builds new weights from the old: no autograd history
        reparameterize_model(holder, inplace=True)
    return holder[0]


def deployed_if_equivalent(model: nn.Module, input_shape: Sequence[int], tol: float = 1e-3) -> tuple[nn.Module, str]:
    """A model the user brought (a teacher) in the form it deploys, when folding is safe to assume.

    :func:`deployed` folds what timm's ``reparameterize_model`` knows (RepVGG, MobileOne, RepViT,
    FastViT branches; conv + BN ``fuse``). On a model kd-compile did not build, a method of one of
    those names may mean something else, so the folded copy is kept only when it has fewer
    parameters or modules than ``model`` (and no more of either) and its output on a seeded random input of
    ``input_shape`` (C, H, W) matches ``model``'s within ``tol`` (relative to the output's largest
    magnitude); otherwise ``model`` itself is returned.

    Returns:
        (the module to cost, a note: ``""`` when nothing folds, else what was done and why).
    """
    hooks = ("fuse", "reparameterize", "switch_to_deploy")  # what reparameterize_model calls
    if not any(hasattr(m, h) for m in model.modules() if m is not model for h in hooks):
        return model, ""  # nothing to fold: no copy
    try:
        folded = deployed(model)
    except Exception as exc:  # noqa: BLE001 - a user's model: any failure means "cost it as given"
        return model, f"not folded ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})"

    def size(m: nn.Module) -> tuple[int, int]:
        return sum(p.numel() for p in m.parameters()), sum(1 for _ in m.modules())

    (n1, k1), (n0, k0) = size(folded), size(model)
    if (n1, k1) == (n0, k0):
        return model, ""
    if n1 > n0 or k1 > k0:
        return model, "not folded (the folded copy is not smaller)"
    p = next((q for q in model.parameters() if q.is_floating_point()), None)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *input_shape), generator=gen)
    x = x.to(p.device, p.dtype) if p is not None else x
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            a, b = model(x), folded(x)
        if not (torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape):
            return model, "not folded (the folded copy's output differs in form)"
        err = float((a.float() - b.float()).abs().max())
        scale = float(a.float().abs().max()) or 1.0
    except Exception as exc:  # noqa: BLE001 - as above
        return model, f"not folded (the folded copy fails: {type(exc).__name__})"
    finally:
        model.train(was_training)
    if not err <= tol * scale:
        return model, f"not folded (the folded copy's outputs differ by {err / scale:.1e} of their scale)"
    return folded, "re-parameterisable blocks folded (outputs unchanged on a test input)"
