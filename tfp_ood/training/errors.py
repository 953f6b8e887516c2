"""The errors of training: what a user can act on, raised where training meets it."""

from tfp_ood.errors import InputError, TfpOodError

__all__ = ['ConfigMismatchError', 'RunLockedError', 'TrainingDivergedError']


class TrainingDivergedError(TfpOodError, RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class ConfigMismatchError(InputError):
    """The work directory holds a run of another configuration."""


class RunLockedError(TfpOodError, RuntimeError):
    """Another live process is training in the same run directory."""
