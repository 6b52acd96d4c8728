# Every program in one image: `python -m webhook serve|issuer`, `python -m sds_sidecar serve`,
# `python -m gateway serve`, on the shared layers of sds_core.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sds_core ./sds_core
COPY sds_sidecar ./sds_sidecar
COPY webhook ./webhook
COPY gateway ./gateway
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --gid 65532 nonroot && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin nonroot
USER 65532:65532
EXPOSE 8443 15012
ENTRYPOINT ["python", "-m"]
CMD ["webhook", "serve"]
