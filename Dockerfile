# icmh-traffic cloud server (and edge node), CPU build.
#   docker build -t icmh-traffic .
#   docker run -p 50051:50051 -p 9102:9102 -v $PWD/models:/models:ro -v icmh-data:/data icmh-traffic \
#       --camera cam1=secret --operators-file /config/operators.json --index postgresql://icmh@db/icmh
# The YOLO checkpoint is not in the image: mount it at /models/yolov8n.pt (or pass --detector).
# Fleet deployments: deploy/compose.yaml (one site), deploy/k8s/ (Kubernetes), docs/scale-out.md.
FROM python:3.11-slim-bookworm

# CPU-only torch wheels (the PyPI ones pull several GB of CUDA libraries); override for another index or mirror
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/ultralytics

# libGL and glib for OpenCV (ultralytics installs opencv-python); tcmalloc, which the commands re-execute on
# (icmh/allocator.py: 15-20 % faster decoding than glibc's malloc on a 2-core VM)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY constraints.txt ./
RUN grep -E '^(torch|torchvision)==' constraints.txt > /tmp/torch.txt \
    && pip install --index-url "$TORCH_INDEX_URL" -r /tmp/torch.txt
COPY pyproject.toml README.md ./
COPY proto proto
COPY shared shared
COPY edge_node edge_node
COPY cloud_server cloud_server
RUN pip install -c constraints.txt ".[fleet]" \
    && python -c "import torch, icmh.cloud.server, psycopg, paho.mqtt, nats; print('torch', torch.__version__)"

RUN useradd --system --uid 10001 --home-dir /data icmh && mkdir -p /data /models && chown icmh /data
USER icmh
VOLUME ["/data"]
EXPOSE 50051 9102
# grpc.health.v1 on the gRPC port (the health service is open unless --auth-health)
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s CMD python -c "import grpc, sys; \
from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
c = grpc.insecure_channel('127.0.0.1:50051'); \
s = g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=3).status; sys.exit(s != h.HealthCheckResponse.SERVING)"
ENTRYPOINT ["icmh-cloud", "--listen", "0.0.0.0:50051", "--data-dir", "/data", "--metrics-port", "9102", \
            "--detector", "/models/yolov8n.pt"]
