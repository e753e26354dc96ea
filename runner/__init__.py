"""Runner: a video from `outbox_events` -> sampled, preprocessed frames on `inference_tasks`; then the
results from `inference_results` collected into `runner_db.runner_predictions`."""
