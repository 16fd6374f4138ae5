# ssl-zoo service on a CUDA runtime image; it also runs without a GPU (ONNX Runtime and torch fall back to CPU).
#   docker build -t ssl-zoo .
#   docker run --gpus all -p 8000:8000 ssl-zoo                       # the bundled default model
#   docker run -p 8000:8000 -v $PWD/runs/a/encoder:/model ssl-zoo --model /model   # CPU, your model folder
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    ZOO_HOST=0.0.0.0 ZOO_PORT=8000 ZOO_HOME=/data
RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common curl \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# Dependencies first (cached layer), then the code and the bundled default model and gallery.
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir --upgrade pip \
    && pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1
COPY zoo ./zoo
COPY training ./training
COPY service ./service
RUN pip install --no-cache-dir '.[gpu]'

RUN useradd --create-home --uid 1000 zoo && mkdir -p /data && chown zoo /data
USER zoo
VOLUME /data
EXPOSE 8000
# /healthz answers as soon as the process is up; /readyz once the model is loaded (use it in orchestrators).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
ENTRYPOINT ["python", "-m", "service"]
