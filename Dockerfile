# toposcale: one image for every component (`toposcale adapter|extender|agent ...`).
#
#   docker build -t <registry>/toposcale:0.1.0 .        # base python:3.11-slim, packages from PyPI
#   ./scripts/build-image.sh                             # buildah, debootstrap base, wheels built on the host
#
# BASE: any Debian-like image with python3 >= 3.11 and its venv module. When wheels/ holds wheels (the script
# fills it with `pip wheel` on the host, for the base's Python), the build installs only from there
# (`--no-index`); empty, it downloads from PyPI. toposcale itself is always built from the sources copied here.
# Runs as a non-root user and writes nothing but /tmp (mount an emptyDir there), so pods can set
# readOnlyRootFilesystem: true. The node agent overrides the user to 0 (see deploy/agent/daemonset.yaml).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY wheels/ /wheels/
COPY pyproject.toml README.md /src/
COPY toposcale/ /src/toposcale/
COPY adapter/ /src/adapter/
COPY extender/ /src/extender/
# Nothing installs at run time: drop the installers, tests and sample data; compile once (read-only root).
RUN set -eu; \
    if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi; \
    python3 -m venv /opt/toposcale; \
    /opt/toposcale/bin/pip wheel -q --no-deps --wheel-dir /tmp/dist /src; \
    /opt/toposcale/bin/pip install -q /tmp/dist/toposcale-*.whl; \
    /opt/toposcale/bin/pip uninstall -q -y pip setuptools wheel 2>/dev/null || true; \
    sp=$(echo /opt/toposcale/lib/python3*/site-packages); \
    find /opt/toposcale -name __pycache__ -prune -exec rm -rf {} +; \
    rm -rf "$sp"/*/tests "$sp"/*/*/tests; \
    python3 -m compileall -q -j 0 /opt/toposcale >/dev/null

FROM ${BASE}
COPY --from=build /opt/toposcale /opt/toposcale
ENV PATH=/opt/toposcale/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
RUN useradd --system --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin toposcale
USER 65532:65532
EXPOSE 6443 8888 9410
ENTRYPOINT ["toposcale"]
CMD ["--help"]
