"""Errors a user can cause and fix: bad config, missing or damaged data, an unreachable cluster.

A leaf module (it imports nothing from the package), so every layer can raise these without import cycles.
The command line catches `UserError` and prints its message as one line (exit code 2, no traceback); every
other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message names the cause (a config key, a file) and the fix."""


class ConfigError(UserError, ValueError):
    """A config value is missing, unknown, of the wrong type or impossible; the message names the key."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A data root or data file is missing; the message lists where we looked and how to fix it."""


class DataCorruptError(UserError, ValueError):
    """A data file exists but cannot be read (truncated, wrong format); the message names the file."""


class ClusterError(UserError, RuntimeError):
    """The configured Ray cluster cannot be reached or cannot give what the run needs."""


class WorkersLost(UserError, RuntimeError):
    """Ray lost client workers mid-run (killed for memory, crashed): the run stops before using that round, so
    its checkpoint is intact and `--resume` goes on once the cause is fixed."""


class ResultsWriteError(UserError, OSError):
    """Writing the run's files failed (disk full, permission lost, directory removed): the run stops; what is
    on disk is consistent up to its last checkpoint, from which `--resume` goes on once the cause is fixed."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be resumed from: missing, empty, truncated, corrupt, of another format, or
    holding pickled objects (refused unopened: loading those could run code)."""


__all__ = ["UserError", "ConfigError", "DataNotFoundError", "DataCorruptError", "ClusterError", "WorkersLost",
           "CheckpointError", "ResultsWriteError"]
