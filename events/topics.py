"""Kafka topic names. Every service asks `Settings.topic()` for the real name (tests add a prefix)."""

OUTBOX_EVENTS = "outbox_events"
INFERENCE_TASKS = "inference_tasks"
INFERENCE_RESULTS = "inference_results"
JOB_EVENTS = "job_events"  # every change of a job: the API's read model is built from it


# Consumer groups: one per kind of consumer, so several instances of a service share the partitions.
RUNNER_JOBS_GROUP = "runner-group"
RUNNER_RESULTS_GROUP = "runner-results-group"
INFERENCE_GROUP = "inference-group"
PROJECTOR_GROUP = "api-projector"  # the API folds job_events into its read model
RUNNER_CLEANUP_GROUP = "runner-cleanup-group"  # the runner forgets deleted jobs
RENDER_GROUP = "render-group"  # the render workers: annotated videos of finished jobs

# Messages that cannot be parsed or processed, with the error and their origin.
DEAD_LETTERS = "dead_letters"

ALL = (OUTBOX_EVENTS, INFERENCE_TASKS, INFERENCE_RESULTS, JOB_EVENTS, DEAD_LETTERS)
