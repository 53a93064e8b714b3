"""The bottom layer: pieces every other package shares.

Nothing here imports `ray.train`, a method package or the job schema, so configs, plans,
methods, the trainer and the reports can all build on it without import cycles:

- `storage`: local paths and pyarrow URIs, run folders.
- `compute`: the compute model every plan and report counts in (images x px^2).
- `seeds`: how per-worker and per-epoch seeds derive from the job's seed.
- `distributed`: collectives that are no-ops outside a process group.
- `schedules`: learning-rate schedules as pure functions of progress.
"""
