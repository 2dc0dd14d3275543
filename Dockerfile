# syntax=docker/dockerfile:1
# bem-exporter: docker build -t bem-exporter .
#   docker run -e BEM_API_KEY -p 9877:9877 -v bem-exporter:/var/lib/bem-exporter bem-exporter
# Runs as UID 10001 and writes only to /var/lib/bem-exporter, so it works with a read-only
# root filesystem (docker run --read-only, Kubernetes readOnlyRootFilesystem).

FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
# README.md* : the readme is optional for the build
COPY pyproject.toml README.md* ./
COPY exporter ./exporter

# Build a wheel, then install it with its dependencies into a venv without pip; the venv is
# all the final image takes. pip byte-compiles it here, so nothing is written at run time.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/bem-exporter \
    && pip --python /opt/bem-exporter/bin/python install /wheels/*.whl


FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="bem-exporter" \
      org.opencontainers.image.description="Prometheus metrics and OpenTelemetry traces for bem (bem.ai) workflow calls" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/bem-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BEM_STATE_PATH=/var/lib/bem-exporter/state.sqlite \
    BEM_LISTEN=0.0.0.0:9877

RUN groupadd --system --gid 10001 bem-exporter \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/bem-exporter --shell /usr/sbin/nologin bem-exporter \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/bem-exporter

COPY --from=build /opt/bem-exporter /opt/bem-exporter

WORKDIR /var/lib/bem-exporter
USER 10001:10001
VOLUME ["/var/lib/bem-exporter"]
EXPOSE 9877

# /healthz on the port of BEM_LISTEN (https when BEM_TLS_CERT_FILE is set); no curl in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as u; p = os.environ.get('BEM_LISTEN', '').rpartition(':')[2] or '9877'; s = 'https' if os.environ.get('BEM_TLS_CERT_FILE') else 'http'; u.urlopen(f'{s}://127.0.0.1:{p}/healthz', timeout=4, context=ssl._create_unverified_context())"]

ENTRYPOINT ["bem-exporter"]
CMD ["run"]
