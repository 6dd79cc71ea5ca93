"""The runtime: connecting to Ray, the worker pool, the task scheduler, the training loops
(runners), checkpoints, metrics, the gRPC service and run control. Only the CLI imports it."""
