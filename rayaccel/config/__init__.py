"""The job YAML: its schema, loading, command-line overrides and readable errors.

A job is validated here, at the edge, and nowhere else: builders turn the validated
`JobConfig` into plain arguments for the plan, the data pipeline and the training loop, so
no component ever reads the job. Every problem is reported as one line naming its YAML path
(`train.optimizer.lr: must be > 0, got -1`) so a user can fix all of them in one go.

- `job`: the job's own sections and `JobConfig`, composed with the methods' sections from
  `rayaccel.methods.registry`; loading and data resolution (from the data's metadata, or
  from `data.card` / `data.facts` while planning without the data).
- `io`: YAML files, overrides and curriculum files as raw mappings.
- `errors`: `ConfigError` and the one formatter of schema errors.
"""

from rayaccel.config.errors import ConfigError
from rayaccel.config.io import apply_overrides, load_curriculum_file, merge_curriculum, read_yaml
from rayaccel.config.job import (
    AugmentConfig,
    CosineSchedule,
    JobConfig,
    ResNet9Model,
    ResolvedData,
    TimmModel,
    TrainConfig,
    dump_job,
    load_job,
    parse_job,
    resolve_data,
    resolve_data_facts,
)

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "CosineSchedule",
    "JobConfig",
    "ResNet9Model",
    "ResolvedData",
    "TimmModel",
    "TrainConfig",
    "apply_overrides",
    "dump_job",
    "load_curriculum_file",
    "load_job",
    "merge_curriculum",
    "parse_job",
    "read_yaml",
    "resolve_data",
    "resolve_data_facts",
]
