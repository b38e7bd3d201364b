# toposcale: one image for every component (`toposcale adapter|extender|agent ...`).
# Build: docker build -t ghcr.io/toposcale/toposcale:0.1.0 .
# Runs as a non-root user and needs nothing writable but /tmp (mount an emptyDir there), so pods can set
# readOnlyRootFilesystem: true. The node agent overrides the user to 0 (see deploy/agent/daemonset.yaml).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY toposcale/ toposcale/
COPY adapter/ adapter/
COPY extender/ extender/
RUN python -m venv /opt/toposcale \
 && /opt/toposcale/bin/pip install . \
 && /opt/toposcale/bin/python -m compileall -q /opt/toposcale

FROM python:3.11-slim
COPY --from=build /opt/toposcale /opt/toposcale
ENV PATH=/opt/toposcale/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
RUN useradd --system --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin toposcale
USER 65532:65532
EXPOSE 6443 8888 9410
ENTRYPOINT ["toposcale"]
CMD ["--help"]
