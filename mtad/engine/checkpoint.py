"""The run file moved to `mtad.runfile` (issue 18: one home, importable by
`mtad.deploy` without the engine); these names stay importable from here for
code written against the old module."""
from mtad.runfile import (LEGACY_MAP_DIVISOR, LEGACY_NECK_BIASES, RUN_FORMAT,  # noqa: F401
                          CheckpointError, Run, RunFile, checkpoint_path, load_run, read_run,
                          restore_model, run_dir_of, save_run)

__all__ = ["LEGACY_MAP_DIVISOR", "LEGACY_NECK_BIASES", "RUN_FORMAT", "CheckpointError", "Run",
           "RunFile", "checkpoint_path", "load_run", "read_run", "restore_model", "run_dir_of",
           "save_run"]
