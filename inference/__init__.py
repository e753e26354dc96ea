"""Inference worker: frames from `inference_tasks` through a YOLO detector to `inference_results`."""
