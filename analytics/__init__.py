"""What detections are used for: tracks, counts, zones and exports, as pure folds over a job's frames in order."""
