"""How far two runs' detections agree: F1 of one-to-one matches (same class, IoU >= 0.5), pure.

Used by the tests and the bench to compare the pipeline with the model run directly, an engine with
another, or a model with Ultralytics' `predict`. Objects are the result's dicts (`class`, `box`, `conf`)."""

Objects = list[dict]
IOU_MATCH = 0.5


def iou(p: list[float], q: list[float]) -> float:
    w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - w * h
    return w * h / union if union > 0 else 0.0


def matched(a: Objects, b: Objects, names: dict[str, str] | None = None) -> int:
    """Greedy one-to-one matches of one frame's boxes, `a`'s most confident first (`names` renames `a`'s
    classes to `b`'s)."""
    names = names or {}
    free, hits = list(b), 0
    for obj in sorted(a, key=lambda o: -o["conf"]):
        wanted = names.get(obj["class"], obj["class"])
        best = max((o for o in free if o["class"] == wanted), key=lambda o: iou(obj["box"], o["box"]), default=None)
        if best is not None and iou(obj["box"], best["box"]) >= IOU_MATCH:
            free.remove(best)
            hits += 1
    return hits


def f1(pairs: list[tuple[Objects, Objects]], names: dict[str, str] | None = None) -> float:
    """F1 over frames: 2 x matches / (boxes of a + boxes of b); 1.0 when neither has any."""
    hits = total = 0
    for a, b in pairs:
        hits, total = hits + matched(a, b, names), total + len(a) + len(b)
    return 2 * hits / total if total else 1.0
