# medsearch: the API server and the indexer, installed from this repository's own files.
#   docker build -t medsearch .                                   # CPU
#   docker build -t medsearch:gpu --build-arg EXTRAS=gpu \
#       --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 .   # CUDA
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-pip \
      && rm -rf /var/lib/apt/lists/*; fi
RUN useradd --create-home --uid 10001 medsearch
WORKDIR /opt/medsearch
COPY pyproject.toml README.md ./
COPY indexer ./indexer
COPY service ./service
COPY migrations ./migrations
RUN python3 -m pip install --upgrade pip \
 && python3 -m pip install ".${EXTRAS:+[$EXTRAS]}"
USER medsearch
ENV MEDSEARCH_HOST=0.0.0.0 MEDSEARCH_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
  CMD python3 -c "import os, urllib.request as u; k = os.environ.get('MEDSEARCH_HEALTH_KEY', ''); r = u.Request('http://127.0.0.1:8000/readyz', headers={'Authorization': 'Bearer ' + k} if k else {}); u.urlopen(r, timeout=4)"
ENTRYPOINT ["medsearch"]
CMD ["serve", "--index", "/data/index", "--model", "/models/current"]
