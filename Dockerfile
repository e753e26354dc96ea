# One image for every service: `docker run vdetect <api|outbox-relay|s3-relay|runner|inference|topics>`.
# The default model (inference/models/yolov10n.onnx) is installed inside, as package data.

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

FROM python:3.11.13-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin vdetect
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BIND_HOST=0.0.0.0 \
    STORAGE_BACKEND=s3
WORKDIR /tmp
USER 10001
EXPOSE 8080 8002 8003 8004 8005 8006
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["vdetect", "health", "--port", "8080", "--path", "/api/health"]
ENTRYPOINT ["vdetect"]
CMD ["api"]
