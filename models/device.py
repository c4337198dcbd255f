"""Where models run outside Lightning: the device evaluation and export score on.

Training picks its device through Lightning (`train.accelerator`) and hands the model back on the
CPU; scoring is plain torch, so it chooses again here. On a GPU the [B, n_items] score matrix, the
masks, the metrics and top-k all stay on the device; only per-user metrics and top-k lists come back.
"""
from __future__ import annotations

import logging
from typing import TypeVar

import torch
from torch import nn

log = logging.getLogger(__name__)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
Model = TypeVar("Model")


def scoring_device(preference: str = "auto") -> torch.device:
    """The device to score on: under 'auto' CUDA when available, else the CPU; otherwise the one asked for.

    preference takes train.accelerator's values: auto, cpu, gpu (CUDA, or Apple's MPS), cuda, mps.
    Raises ValueError when the asked accelerator is not available here.
    """
    if preference not in ACCELERATORS:
        raise ValueError(f"accelerator '{preference}' is unknown; expected one of {', '.join(ACCELERATORS)}")
    if preference == "cpu":
        return torch.device("cpu")
    if preference in ("auto", "cuda", "gpu") and torch.cuda.is_available():
        return torch.device("cuda")
    if preference in ("gpu", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    if preference == "auto":
        return torch.device("cpu")
    raise ValueError(f"accelerator '{preference}': no such device is available to torch {torch.__version__} "
                     f"(CUDA build: {torch.version.cuda or 'none'}); use 'auto' or 'cpu'")


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning trains on a CUDA device under this train.accelerator (its 'auto' prefers CUDA)."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def pins_memory(device: torch.device) -> bool:
    """Whether batches bound for `device` should come from page-locked memory (CUDA only): copies then
    run asynchronously (non_blocking) and faster."""
    return device.type == "cuda"


def on_device(model: Model, device: torch.device) -> Model:
    """The model with its weights on `device` (moved in place); models that are not torch modules
    (popularity, item-kNN) follow the device of the histories they score, so they are returned as they are."""
    if isinstance(model, nn.Module):
        model.to(device)
    return model


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast speeds training up
    (2.06× for SASRec on ML-1M here, benchmarks/README.md); elsewhere it is emulated and slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def training_precision(precision: str, accelerator: str) -> str:
    """Lightning's precision for train.precision; 'auto' becomes bf16-mixed where the training device
    computes bf16 natively, else 32-true, and says which it chose."""
    if precision != "auto":
        return precision
    if uses_cuda(accelerator):
        chosen, reason = ("bf16-mixed", "the GPU supports bf16") if torch.cuda.is_bf16_supported() else \
            ("32-true", "the GPU lacks bf16")
    elif cpu_computes_bf16():
        chosen, reason = "bf16-mixed", "the CPU has bf16 instructions (AVX512-BF16/AMX)"
    else:
        chosen, reason = "32-true", "the CPU has no bf16 instructions"
    log.info("train.precision auto: %s (%s)", chosen, reason)
    return chosen
