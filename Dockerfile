# convnets on any NVIDIA GPU host (run with --gpus all) or on CPU only.
# The PyPI wheels of torch (CUDA 13 build) and nvidia-dali-cuda130 carry their CUDA libraries,
# so a plain Python base image suffices; the host needs only the NVIDIA driver (>= 580 for CUDA 13).
# Not built in this project's CI (no Docker engine there); kept correct by reading.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 WANDB_MODE=offline
RUN apt-get update && apt-get install -y --no-install-recommends git make && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/convnets
# Dependencies first: this layer is reused while only the code changes.
COPY pyproject.toml README.md constraints.txt ./
COPY src/convnets/__init__.py src/convnets/__init__.py
RUN pip install -c constraints.txt -e '.[dev]'  # the tested releases
COPY . .
RUN pip install --no-deps -e '.[dev]'
ENTRYPOINT ["convnets"]
CMD ["--help"]
