"""The errors tfp_ood raises for what its user can fix.

Every one is a `TfpOodError`; the command line prints those in one line
(exit status 2) and shows the traceback of anything else, which is a bug to
report. `InputError` is also a `ValueError` (a bad argument, image, file or
configuration), so code written against `ValueError` keeps working. Imports
no TensorFlow.
"""

__all__ = ['InputError', 'TfpOodError']


class TfpOodError(Exception):
    """Something the user can fix: the message says what and how."""


class InputError(TfpOodError, ValueError):
    """A bad argument, image, file or configuration."""
