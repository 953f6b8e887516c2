"""The errors of training: what a user can act on, raised where training meets it."""

__all__ = ['ConfigMismatchError', 'RunLockedError', 'TrainingDivergedError']


class TrainingDivergedError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class ConfigMismatchError(ValueError):
    """The work directory holds a run of another configuration."""


class RunLockedError(RuntimeError):
    """Another live process is training in the same run directory."""
