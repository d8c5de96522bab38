"""The shared measurement log: records (``store``) and the queries over them (``query``)."""
from farm.log.query import (
    best,
    best_per_task,
    history,
    machines_by_key,
    matches,
    measured_indices,
    mixed_machine_warnings,
    mixed_machines,
    top_k,
)
from farm.log.store import (
    LOG_SCHEMA_VERSION,
    LoadedLog,
    LogError,
    LogRecord,
    LogWriter,
    SkippedLine,
    load_log,
    write_log,
)

__all__ = [
    "LOG_SCHEMA_VERSION", "LoadedLog", "LogError", "LogRecord", "LogWriter", "SkippedLine",
    "best", "best_per_task", "history", "load_log", "machines_by_key", "matches", "measured_indices",
    "mixed_machine_warnings", "mixed_machines", "top_k", "write_log",
]
