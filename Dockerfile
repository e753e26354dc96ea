# One image for every service: `docker run vdetect <api|outbox-relay|s3-relay|runner|inference|topics>`.
# The default model (inference/models/yolov10n.onnx) is installed inside, as package data.
#   docker build -t vdetect:0.1.0 .                      the CPU image (OpenVINO, ONNX Runtime)
#   docker build --target gpu -t vdetect:0.1.0-gpu .     ONNX Runtime's CUDA build, CUDA and cuDNN inside

FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml requirements.lock README.md LICENSE ./
COPY analytics ./analytics
COPY api ./api
COPY events ./events
COPY inference ./inference
COPY relays ./relays
COPY render ./render
COPY runner ./runner
COPY vdetect ./vdetect
# trackers without its dependencies: it asks for opencv-python, which would shadow the headless OpenCV
RUN pip install -c requirements.lock . && pip install --no-deps -c requirements.lock trackers

# The GPU variant: `onnxruntime` and `onnxruntime-gpu` are one package name, so one replaces the other;
# its `cuda` and `cudnn` extras bring the CUDA and cuDNN libraries it was built with as NVIDIA's wheels
# (the host needs only the driver and the NVIDIA container toolkit; the detector preloads them).
FROM build AS build-gpu
RUN pip uninstall -y onnxruntime && pip install "onnxruntime-gpu[cuda,cudnn]==1.31.1"

FROM python:3.11.13-slim-bookworm AS runtime
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin vdetect
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BIND_HOST=0.0.0.0 \
    STORAGE_BACKEND=s3
WORKDIR /tmp
USER 10001
EXPOSE 8080 8001 8002 8003 8004 8005 8006
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["vdetect", "health", "--port", "8080", "--path", "/api/health"]
ENTRYPOINT ["vdetect"]
CMD ["api"]

FROM runtime AS gpu
COPY --from=build-gpu /opt/venv /opt/venv
ENV INFERENCE_DEVICE=cuda INFERENCE_ENGINE=onnxruntime

# The default target (last): the CPU image.
FROM runtime AS cpu
COPY --from=build /opt/venv /opt/venv
