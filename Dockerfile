# syntax=docker/dockerfile:1
# The one tunepipe image: the locked dependencies and the project, for `tunepipe ...` on a laptop or a
# CronJob, for the MLflow tracking server in manifests/, and for every step of the KFP pipeline.
#
#   docker build -t REGISTRY/tunepipe:TAG .
#   docker run --rm REGISTRY/tunepipe:TAG tunepipe run --config /app/data/penguins/pipeline.yaml
#
# KFP runs the steps as lightweight components on this image with install_kfp_package=False: it replaces
# the container's command with `sh -ec '... python3 -m kfp.dsl.executor_main ...'`, so the image needs a
# POSIX shell, mktemp and a `python3` that already has kfp and the tunepipe package. Nothing is
# installed when a step starts.

# The Debian slim image of the Python the lock was resolved for (requires-python = ">=3.11,<3.12").
# TensorFlow, pyarrow and the other native dependencies come as manylinux wheels, so no compiler and
# no apt packages are needed.
FROM python:3.11-slim

# The uv that wrote uv.lock; a pinned release from PyPI so every build resolves nothing anew.
ARG UV_VERSION=0.13.9

# uv uses this image's interpreter and never downloads one; bytecode is compiled once at build time
# (faster step start-up, and a read-only root filesystem is fine); uv's download cache is a BuildKit
# cache mount (below), never a layer, so files are copied out of it rather than linked.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /app

# Dependencies first, from the lock alone: editing the code does not reinstall 2 GB of wheels.
# --frozen installs exactly what uv.lock pins (the lock is never re-resolved); --no-dev leaves out the
# test tools.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

# Then the project itself (hatchling needs README.md, the package's readme). Only the project is
# built here; the dependencies above are reused from their layer.
COPY README.md ./
COPY components/ ./components/
COPY pipeline/ ./pipeline/
COPY data/ ./data/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev

# `tunepipe`, `python3` (what KFP's command calls) and `mlflow` resolve to the project's environment.
ENV PATH="/app/.venv/bin:${PATH}" \
    VIRTUAL_ENV=/app/.venv

# A fixed numeric non-root user, so Kubernetes' runAsNonRoot can verify it from the image alone. The
# code stays root-owned and read-only; runs write to the home directory (the working directory) or
# to the artifact paths KFP hands them.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/tunepipe --shell /usr/sbin/nologin tunepipe
ENV HOME=/home/tunepipe
WORKDIR /home/tunepipe
USER 10001:10001

# No ENTRYPOINT: KFP and the manifests set the command (`sh -ec ...`, `mlflow server ...`), and
# `docker run IMAGE tunepipe ...` or `docker run IMAGE python3 ...` work as typed.
CMD ["tunepipe", "--help"]
