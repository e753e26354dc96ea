"""The render worker: a finished job's annotated video (boxes, labels, track ids, zones over the original)."""
