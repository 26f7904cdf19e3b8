# syntax=docker/dockerfile:1
#
# dnsd image: a virtual environment built in one stage and copied, alone, into a clean slim image.
# The final image holds no compiler, no source tree and no pip; it runs as the numeric non-root user
# 65532 (so Kubernetes' runAsNonRoot can verify it) and listens unprivileged on 1053 (the chart maps
# Service port 53 to it), so it needs no capabilities.
#
#   docker build -t dnsd .
#   docker run --rm -p 1053:1053/udp -p 1053:1053/tcp -p 8080:8080 \
#     -v "$PWD/examples:/examples:ro" dnsd \
#     --zone c2.k8s.ooo --source file:/examples/cluster.yaml --listen '[::]:1053'
#
# tests/test_wheel_install.py repeats the builder's steps in a fresh virtual environment and checks
# this file's shape, since no container engine runs in CI.

ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dnsd ./dnsd
# Build the wheel from the source tree, then install it with the `fast` extra (uvloop) into the
# virtual environment that becomes the image's only payload; pip itself does not ship.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/dnsd \
 && /opt/dnsd/bin/pip install "$(ls /wheels/dnsd-*.whl)[fast]" \
 && /opt/dnsd/bin/pip uninstall --yes pip \
 && /opt/dnsd/bin/dnsd --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="dnsd" \
      org.opencontainers.image.description="Authoritative DNS for Kubernetes global service names, with recursion and DNS64" \
      org.opencontainers.image.source="https://github.com/k8s-ooo/dnsd" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/dnsd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/dnsd /opt/dnsd
USER 65532:65532
EXPOSE 1053/udp 1053/tcp 8080/tcp
ENTRYPOINT ["dnsd"]
