"""Task registry, file formats and input construction. Imports neither torch nor datasets."""

from stilts_tui.tasks.data import file_for, labels_for, load_examples, load_split, missing_files, required_files
from stilts_tui.tasks.registry import BUILTIN, KINDS, METRICS, TaskDef, get, is_builtin, names

__all__ = [
    "BUILTIN",
    "KINDS",
    "METRICS",
    "TaskDef",
    "file_for",
    "get",
    "is_builtin",
    "labels_for",
    "load_examples",
    "load_split",
    "missing_files",
    "names",
    "required_files",
]
