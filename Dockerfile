# convnets for GPU clusters: Docker (`docker run --gpus all --ipc=host ...`) or enroot/pyxis
# (`srun --container-image=...`). CUDA 13 runtime + cuDNN; torch (its CUDA 13 build) and DALI's CUDA 13
# build (nvidia-dali-cuda130) come at the tested releases (constraints.txt). Host: NVIDIA driver >= 580.
# No W&B mode or credentials are baked in: pass WANDB_API_KEY / WANDB_MODE at run time.
# Not built in this project's CI (no Docker engine there): linted by hadolint and checked against
# pyproject.toml by tests/unit/test_dockerfile.py.

# -- build: the wheel (no editable install, no dev extras in the image) ----------------------------
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir build==1.3.0 && python -m build --wheel --outdir /dist .

# -- runtime -----------------------------------------------------------------------------------------
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
COPY --from=build /dist/ /tmp/dist/
COPY constraints.txt /tmp/constraints.txt
# The wheel's dependencies at the tested releases (torch CUDA 13 build, nvidia-dali-cuda130, ...): constraints.txt.
# The import compiles the CPU graph's Numba kernels once, here, into NUMBA_CACHE_DIR (Numba uses
# only a cache directory it can write: the user's, below), instead of in every container's first
# run; a CPU unlike the build machine's recompiles into the same directory.
ENV NUMBA_CACHE_DIR=/opt/numba-cache
RUN pip install --no-cache-dir -c /tmp/constraints.txt /tmp/dist/convnets-0.1.0-py3-none-any.whl \
    && rm -rf /tmp/dist /tmp/constraints.txt \
    && python -c "import convnets.data_pipelines.loading.cpu_kernels"
# Not root; uid 10001 (the base image already has uid 1000, "ubuntu"). Mount data and runs/ writable for it.
RUN useradd --create-home --uid 10001 convnets && chown -R 10001 /opt/numba-cache
USER 10001
WORKDIR /home/convnets/work
ENTRYPOINT ["convnets"]
CMD ["--help"]
