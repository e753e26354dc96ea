"""`vdetect model import` and `vdetect model list`: the models jobs may name.

An ONNX file is sent to the API as it is (`POST /api/models`, which inspects it); a `.pt` is first
exported to ONNX on this machine by `python -m vdetect.export` in a process of its own (loading a
checkpoint runs its code), then sent with where it came from (its sha256, the Ultralytics version)."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from events.modelfile import sha256_of
from vdetect.client import OK, Api, ClientError

EXPORT_TIMEOUT_S = 1800


def export(checkpoint: Path, out: Path) -> dict:
    """Run the exporter in a child process; ClientError with its message if it fails."""
    try:
        done = subprocess.run([sys.executable, "-m", "vdetect.export", str(checkpoint), str(out)], capture_output=True,
                              text=True, timeout=EXPORT_TIMEOUT_S, cwd=out.parent, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ClientError(f"the export of {checkpoint.name} took over {EXPORT_TIMEOUT_S} s") from None
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        reason = errors[-1].removeprefix("error: ") if errors else (done.stderr.strip().splitlines() or ["?"])[-1]
        raise ClientError(f"{checkpoint.name} could not be imported: {reason}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def import_model(path: Path, name: str | None, url: str, api_key: str | None) -> int:
    if not path.is_file():
        raise ClientError(f"no such file: {path}")
    kind = path.suffix.lower().lstrip(".")
    if kind not in ("pt", "onnx"):
        raise ClientError(f"{path.name}: a model is a .pt (Ultralytics checkpoint) or an .onnx file")
    name = name or path.stem
    err = Console(stderr=True)
    source = {"format": kind, "file": path.name[:255], "sha256": sha256_of(path)}
    with tempfile.TemporaryDirectory(prefix="vdetect-export-") as work:
        onnx = path
        if kind == "pt":
            err.print(f"exporting {path.name} to ONNX (Ultralytics, in a process of its own)", highlight=False)
            onnx = Path(work) / f"{path.stem}.onnx"
            source["ultralytics"] = export(path.resolve(), onnx)["ultralytics"]
        with onnx.open("rb") as content:
            answer = Api(url, api_key, timeout=600).request(
                "POST", "/models", files={"file": (onnx.name, content, "application/octet-stream")},
                data={"name": name, "source": json.dumps(source)},
            )  # fmt: skip
    model = answer.json()
    sys.stdout.write(f"{model['name']} {model['sha256']} {model['layout']} {len(model['classes'])} classes\n")
    return OK


def list_models(url: str, api_key: str | None) -> int:
    table = Table("name", "classes", "imgsz", "layout", "sha256", "source", "default", box=None)
    for model in Api(url, api_key).request("GET", "/models").json()["models"]:
        classes = ", ".join(model["classes"][:4]) + (
            f" (+{len(model['classes']) - 4})" if len(model["classes"]) > 4 else ""
        )
        source = model["source"]
        origin = f"{source['format']} {source['file']}" + (f" (ultralytics {source['ultralytics']})"
                                                            if source.get("ultralytics") else "")  # fmt: skip
        table.add_row(model["name"], classes, str(model["imgsz"]), model["layout"], model["sha256"][:12], origin,
                      "yes" if model["default"] else "")  # fmt: skip
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    return OK
