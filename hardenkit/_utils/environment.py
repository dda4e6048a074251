"""Environment and model fingerprints echoed into every report."""

from __future__ import annotations

import hashlib
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

import torch
from torch import nn

from .._version import __version__


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment_info() -> dict[str, object]:
    """Versions and hardware that produced a report."""
    ort = package_version("onnxruntime-gpu") or package_version("onnxruntime")
    return {
        "hardenkit": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "numpy": package_version("numpy"),
        "onnxruntime": ort,
    }


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's state dict."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
