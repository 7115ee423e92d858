"""What a result was produced with: package versions, git revision, hardware.

Light to import (torch only inside the functions that read it): the command line and the report
writers use it without loading torch and Lightning.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PACKAGES = (
    "convnets",
    "torch",
    "torchvision",
    "pytorch-lightning",
    "torchmetrics",
    "nvidia-dali-cuda130",
    "webdataset",
    "wandb",
    "submitit",
    "jsonargparse",
    "numpy",
)


def installed_version(distribution: str) -> str | None:
    """A distribution's version from its metadata, without importing it (Lightning takes seconds)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str]:
    """Every package a run's result depends on, by distribution name ("absent" where not installed)."""
    return {"python": platform.python_version(), **{name: installed_version(name) or "absent" for name in PACKAGES}}


def runtime_versions() -> dict[str, str]:
    """Python, torch, Lightning and, on a GPU, CUDA and cuDNN: what a timing depends on."""
    import torch

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": installed_version("pytorch-lightning"),
    }
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def git_revision(where: Path | None = None) -> str:
    """`<sha>` or `<sha>-dirty` of the checkout holding the code, or "unknown" outside git."""
    cwd = where or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def hardware(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {torch.get_num_threads()} CPU threads"
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def cpu_name() -> str:
    try:  # Linux names the model; platform.processor() is often empty there
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
