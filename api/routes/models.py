"""The models jobs may name: `GET /api/models` lists them, `POST /api/models` imports an ONNX file
(`vdetect model import` exports a `.pt` to ONNX on the client's machine first)."""

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import IO, Annotated

from fastapi import APIRouter, File, Form, UploadFile, status
from pydantic import ValidationError

from api.deps import ServicesDep
from api.schemas import ModelEntry, ModelList, Problem
from api.validation import client_error, file_label
from events.contracts import ModelDocument, ModelSource
from events.log import get_logger
from events.modelfile import ModelError, sha256_of

router = APIRouter()
log = get_logger(__name__)
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def entry(doc: ModelDocument, default: str) -> ModelEntry:
    return ModelEntry(name=doc.id, sha256=doc.sha256, classes=doc.classes, imgsz=doc.imgsz, stride=doc.stride,
                      layout=doc.layout, source=doc.source, default=doc.id == default,
                      created_at=doc.created_at)  # fmt: skip


@router.get("/models")
async def list_models(services: ServicesDep) -> ModelList:
    default = services.settings.default_model_name
    return ModelList(models=[entry(doc, default) for doc in await services.models.all()])


def copy_to(source: IO[bytes], target: Path) -> None:
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


@router.post(
    "/models",
    status_code=status.HTTP_201_CREATED,
    responses={400: {"model": Problem, "description": "not a detection model the workers can serve, and why"},
               413: {"model": Problem, "description": "larger than MAX_MODEL_BYTES"}},
)  # fmt: skip
async def import_model(
    services: ServicesDep,
    file: Annotated[UploadFile, File(description="the model, exported to ONNX")],
    name: Annotated[str, Form(pattern=MODEL_NAME, description="the name jobs give in `model`")],
    source: Annotated[
        str | None, Form(max_length=1000, description="JSON: where it came from (the CLI sets it)")
    ] = None,
) -> ModelEntry:
    with tempfile.TemporaryDirectory(prefix="vdetect-model-") as work:
        path = Path(work) / "model.onnx"
        await asyncio.to_thread(copy_to, file.file, path)
        if path.stat().st_size == 0:
            raise client_error("the model file is empty")
        try:
            origin = (ModelSource.model_validate_json(source) if source else
                      ModelSource(format="onnx", file=file_label(file.filename) or "model.onnx",
                                  sha256=await asyncio.to_thread(sha256_of, path)))  # fmt: skip
        except ValidationError as error:
            raise client_error(f"source is not a model source: {error.errors()[0]['msg']}") from error
        if origin.format == "builtin":
            raise client_error("source.format must be pt or onnx")
        try:
            doc = await services.models.register(name, path, origin, sha256=None if source else origin.sha256)
        except ModelError as error:
            raise client_error(f"{file_label(file.filename) or 'the file'} cannot be served: {error}") from error
    log.info("model imported", model=name, sha256=doc.sha256, source=origin.format)
    return entry(doc, services.settings.default_model_name)
