"""Per-sample gradients: one function, two backends (``torch.func`` and BackPACK).

For a batch ``(x_i, y_i)``, i = 1..B, and a model with parameters theta, the per-sample gradient of
parameter ``p`` is ``g_i = d loss(model(x_i), y_i) / d p``, a tensor of shape ``(B, *p.shape)``. The loss of
each example is *not* divided by B (it is ``reduction="sum"`` over a batch of one), so clipping g_i to norm C
bounds one example's contribution to the summed gradient by C, which is what DP-SGD's sensitivity
argument needs.

Backends:

``"func"`` (default)
    ``torch.func.vmap(torch.func.grad(loss of one example))`` over the batch: any architecture, no hooks.
``"backpack"``
    BackPACK's ``BatchGrad`` extension (Dangel et al. 2020), what the GEP code uses: one backward pass with
    extended modules. Supports the standard layers (Linear, Conv, norms without running statistics).
    BackPACK's hooks would break ``torch.func`` on the same model, so it runs on an extended *copy* of the
    model (made once, its parameters refreshed from the model at every call).

BatchNorm in training mode is refused: it mixes the examples of a batch, so a "per-example" gradient does
not describe one example's influence and the DP analysis fails. Use GroupNorm (as GEP's ResNet20 does).
"""
from __future__ import annotations

import copy
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from . import checks

BACKENDS = ("func", "backpack")


def check_no_batchnorm(model: nn.Module) -> None:
    """Raise if ``model`` has a BatchNorm layer in training mode (see the module docstring)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(f"layer {name!r} is {type(module).__name__} in training mode: it mixes the examples "
                             "of a batch, so per-sample gradients (and DP) are meaningless. Replace it with "
                             "nn.GroupNorm, or call .eval() on it if its statistics are frozen.")


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that require gradients, by name, in ``model.parameters()`` order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, backend: str = "func",
                         chunk_size: int | None = -1) -> dict[str, torch.Tensor]:
    """Gradients of the cross-entropy of each example separately.

    Args:
        model: maps ``x`` ``(B, ...)`` to logits ``(B, n_classes)``.
        x, y: inputs and integer labels ``(B,)``.
        backend: ``"func"`` or ``"backpack"``.
        chunk_size: ``"func"`` only: examples per vectorised chunk (``vmap``'s ``chunk_size``); None: the
            whole batch at once; -1 (default): 64 on a CPU, where cache-sized chunks measured 3x faster on
            ResNet20 (benchmarks/gep_step.py), and the whole batch on a GPU.

    Returns:
        dict parameter name -> tensor ``(B, *param.shape)``, in ``model.parameters()`` order. ``model`` and
        its ``p.grad`` are left untouched.
    """
    checks.one_of(backend, BACKENDS, "backend", "per_sample_gradients()")
    checks.check(x.shape[0] == y.shape[0], "y", "per_sample_gradients()", f"as long as x ({x.shape[0]} examples)",
                 y.shape[0])
    check_no_batchnorm(model)
    params = trainable(model)
    if backend == "func":
        if chunk_size == -1:
            chunk_size = None if x.device.type == "cuda" else 64
        return _func(model, params, x, y, chunk_size)
    return _backpack(model, params, x, y)


def _func(model, params, x, y, chunk_size):
    from torch.func import functional_call, grad, vmap

    detached = {k: v.detach() for k, v in params.items()}
    buffers = dict(model.named_buffers())

    def loss_of_one(p, xi, yi):
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0), reduction="sum")

    return vmap(grad(loss_of_one), in_dims=(None, 0, 0), randomness="different", chunk_size=chunk_size)(
        detached, x, y)


_EXTENDED_COPIES: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()


def _extended_copy(model: nn.Module) -> nn.Module:
    """A BackPACK-extended copy of ``model`` with the model's current parameters, buffers and mode."""
    from backpack import extend

    twin = _EXTENDED_COPIES.get(model)
    if twin is None:
        twin = _EXTENDED_COPIES[model] = extend(copy.deepcopy(model))
    with torch.no_grad():
        for mine, theirs in zip(twin.parameters(), model.parameters()):
            mine.copy_(theirs)
        for mine, theirs in zip(twin.buffers(), model.buffers()):
            mine.copy_(theirs)
    return twin.train(model.training)


def _backpack(model, params, x, y):
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad

    model = _extended_copy(model)
    params = {name: p for name, p in model.named_parameters() if name in params}
    loss = extend(nn.CrossEntropyLoss(reduction="sum"))(model(x), y)
    for p in params.values():
        p.grad = None
    with warnings.catch_warnings():
        # BackPACK's hooks fire on module outputs because the inputs need no gradient: expected here.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Extension saving to grad_batch does not have an extension")
        with backpack(BatchGrad()):
            loss.backward()
    missing = [name for name, p in params.items() if not hasattr(p, "grad_batch")]
    out = {name: p.grad_batch for name, p in params.items() if hasattr(p, "grad_batch")}
    for p in params.values():
        p.grad = None
        if hasattr(p, "grad_batch"):
            del p.grad_batch
    if missing:
        raise ValueError(f"BackPACK's BatchGrad does not support the layers of parameters {', '.join(missing)} "
                         "(e.g. GroupNorm with affine=True). Use backend='func', or layers BackPACK supports "
                         "(GEP's ResNet20 uses GroupNorm(affine=False)).")
    return out


_FITTING_CHUNKS: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()  # chunk_size="auto"


def flat_per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, backend: str = "func",
                              chunk_size: int | str | None = -1, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample gradients as one matrix G ``(B, p)``, written chunk by chunk into ``out``.

    The same numbers as ``flatten(per_sample_gradients(...))`` without its second B x p copy: each chunk's
    gradients go straight into their rows of ``out`` (a preallocated buffer of at least B rows, reused across
    steps by :class:`dpbook.gep.GEP`), so the peak memory is G plus one chunk's gradients.

    Args:
        model, x, y, backend: as :func:`per_sample_gradients`.
        chunk_size: examples per chunk; ``"auto"``: the whole batch, halved after each out-of-memory error
            until a chunk fits; the size that fitted after an error is remembered for ``model`` as a cap on
            later chunks; -1 (default): 64 on a CPU (cache-sized chunks, benchmarks/gep_step.py), ``"auto"`` on a
            GPU; None: the whole batch.
        out: buffer ``(>= B, p)`` on ``x``'s device (default: a new one); rows beyond B are left as they are.

    Returns:
        the view ``out[:B]``.
    """
    params = trainable(model)
    n, n_params = len(x), sum(p.numel() for p in params.values())
    if out is None:
        out = torch.empty(n, n_params, device=x.device, dtype=next(iter(params.values())).dtype)
    checks.check(out.dim() == 2 and out.shape[0] >= n and out.shape[1] == n_params, "out",
                 "flat_per_sample_gradients()", f"a ({n}+, {n_params}) buffer", tuple(out.shape))
    if chunk_size == -1:
        chunk_size = "auto" if x.device.type == "cuda" else 64
    auto = chunk_size == "auto"
    size = min(_FITTING_CHUNKS.get(model, n), n) if auto else chunk_size or n
    size = max(size, 1)
    start = 0
    while start < n:  # a loop over chunks of the batch, each one vectorised
        rows = slice(start, min(start + size, n))
        try:
            grads = per_sample_gradients(model, x[rows], y[rows], backend=backend, chunk_size=None)
        except torch.OutOfMemoryError:
            if not auto or size == 1:
                raise
            grads = None
        if grads is None:  # out of memory: this chunk again, halved, and later calls capped there
            size = max(1, size // 2)
            _FITTING_CHUNKS[model] = size
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        col = 0
        for g in grads.values():
            out[rows, col:col + g[0].numel()] = g.flatten(1)
            col += g[0].numel()
        del grads
        start = rows.stop
    return out[:n]


def flatten(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate per-sample gradients into one matrix ``G`` of shape ``(B, p)``, p = total parameters,
    columns in the order of ``grads`` (the parameters' order)."""
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


def unflatten(vector: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut a flat vector ``(p,)`` back into tensors shaped like the parameters named in ``like``."""
    out, start = {}, 0
    for name, p in like.items():
        out[name] = vector[start:start + p.numel()].view_as(p)
        start += p.numel()
    if start != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, the parameters {start}")
    return out
