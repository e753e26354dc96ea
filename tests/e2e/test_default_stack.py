"""End to end: the stack exactly as `make up` starts it, on its default ports, in a network of its own."""

import json
import subprocess
import sys

import pytest

from tests.harness import isolated
from tests.servers import ROOT

pytestmark = pytest.mark.e2e


def test_make_up_with_its_defaults_runs_a_real_video_on_every_worker_without_a_restart() -> None:
    run = subprocess.run(isolated([sys.executable, "-m", "tests.e2e.default_stack"]), cwd=ROOT, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    print(json.dumps(report, indent=1))  # the figures, with -s or on failure
    assert "error" not in report, report
    assert report["exited"] == [], report["exited"]  # no service lost its port or crashed
    assert report["first_job"]["status"] == "ready" and report["first_job"]["frames"] == 50  # uploaded before ready
    assert report["second_job"] == {"status": "ready", "frames": 50}
    for name, health in report["health"].items():
        assert health["code"] == 200 and health.get("ready", True) is True, (name, health)
    assert report["health"]["api"]["status"] == "ok" and report["health"]["api"]["down"] == []
    workers = [name for name in report["listeners"] if name.startswith("inference")]
    assert len(workers) == len(report["detected"]) >= 1
    assert all(frames > 0 for frames in report["detected"].values()), report["detected"]  # every worker detected
    assert report["stack_exit"] == 0
    # the default engine on this machine, and detections that are the model's own
    assert report["engines"] == (["openvino bf16"] if native_bf16() else ["openvino f32"]), report["engines"]
    for video, agreed in report["agreement"].items():
        assert agreed["frames"] > 0 and agreed["boxes"] > 0, (video, agreed)
        assert agreed["f1"] >= 0.97, (video, agreed)
    # tracks, counts, zones and the annotated video, on the default stack
    tracks = report["tracks"]
    assert tracks["status"] == "ready" and tracks["tracked"] > 0.5 * tracks["objects"], tracks
    assert tracks["mean_track_length"] >= 3, tracks  # ids persist across sampled frames
    classes = tracks["summary"]["classes"]
    assert classes["car"]["tracks"] >= 2 and classes["car"]["max_at_once"] >= 2, classes
    cars = [c for c in tracks["zones"]["post"]["crossings"] if c["class"] == "car" and 140 <= c["frame"] <= 187]
    assert [c["direction"] for c in cars] == ["out"], tracks["zones"]["post"]  # the hand count: one car, left to right
    assert tracks["recount"] == tracks["zones"]["post"]["counts"]  # recounted from the stored tracks
    assert tracks["mot_lines"] == tracks["tracked"] and tracks["mot_type"].startswith("text/plain")
    assert tracks["coco"]["images"] == 50 and tracks["coco"]["annotations"] == tracks["objects"]
    render = tracks["render"]
    assert render["status"] == "ready", render
    assert render["range"] == [206, f"bytes 0-99/{render['range'][1].rsplit('/', 1)[1]}", 100]
    assert render["codec"] == "h264" and render["frames"] == render["source_frames"] == 250, render
    assert abs(render["seconds"] - render["source_seconds"]) < 0.05, render
    # along the boxes' edges the pixels change far more than elsewhere (where only the H.264 encoding, the
    # zones' outlines and the labels touch them)
    assert render["edges"] > 20 and render["edge_difference"] > 4 * render["away_difference"], render


def native_bf16() -> bool:
    from inference.openvino_engine import cpu_precisions  # noqa: PLC0415 - x86-64 only

    return "BF16" in cpu_precisions()
