"""Writing a command's outputs so that nothing is lost and nothing is half-written.

- `hold_lock(path, ...)`: a lock file naming the process and machine that
  holds it; a live holder is refused, a stale one (its process gone) taken
  over. Training holds one in its run directory; every command that writes a
  folder holds one beside it.
- `check_output(path, ...)`: before any work, `--output` is checked: not a
  file where a folder is wanted (or the reverse), not one of the command's
  own inputs (a model, a fit, an images folder, or a folder holding one),
  its parent writable, and what it would replace refused without
  `--overwrite`.
- `staged_folder(path, names, ...)`: the folder is written into a hidden
  staging folder beside it and published at the end (renamed into place, or
  its files moved in one by one when the folder exists already); a failed or
  interrupted run removes the staging folder, so it leaves no partial output
  and no temporary files, and two runs cannot publish over each other.
"""

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
from typing import Iterable, Iterator, Optional, Sequence, Type

from tfp_ood.errors import InputError, TfpOodError

__all__ = ['OutputError', 'OutputLockedError', 'abandon', 'check_output', 'deferring', 'hold_lock',
           'publishing', 'publishing_now', 'staged_folder', 'temporary_folder']

# What this process is writing: staging folders and the locks it holds, so a
# signal handler can remove them (`abandon`) before the process exits, and
# whether a staged folder is being published just now.
_STAGING: set = set()
_LOCKS: set = set()
_PUBLISHING = [False]


def abandon() -> None:
    """Removes this process's staging folders and locks (for a signal handler
    about to end the process: nothing partial is left behind)."""
    for staging in list(_STAGING):
        shutil.rmtree(staging, ignore_errors=True)
    for lock in list(_LOCKS):
        with contextlib.suppress(OSError):
            os.remove(lock)


# Signals a handler held back (`deferring`) while a file was being created and
# registered for `abandon`; raised again when that is done.
_DEFERRED = {'active': False, 'pending': []}


def deferring(signum: int) -> bool:
    """For a signal handler: whether to hold `signum` back because a lock or a
    staging folder is being created and registered just now (it is raised again
    right after). A process-wide signal mask cannot do this: the signal would
    reach one of TensorFlow's threads, and Python runs the handler anyway."""
    if _DEFERRED['active']:
        _DEFERRED['pending'].append(signum)
        return True
    return False


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """The block runs whole before a handler that asks `deferring` acts on a signal,
    so it never sees a file created but not yet registered for `abandon`."""
    _DEFERRED['active'] = True
    try:
        yield
    finally:
        _DEFERRED['active'] = False
        pending, _DEFERRED['pending'] = _DEFERRED['pending'], []
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


@contextlib.contextmanager
def temporary_folder(parent: Optional[str] = None, prefix: str = '.staging-') -> Iterator[str]:
    """A temporary folder in `parent` (the system's by default), removed on any
    exit of the block, and by `abandon` if a signal ends the process first."""
    with _signals_deferred():
        folder = tempfile.mkdtemp(prefix=prefix, dir=parent)
        _STAGING.add(folder)
    try:
        yield folder
    finally:
        _STAGING.discard(folder)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def publishing_now() -> Iterator[None]:
    """Marks the block as moving finished outputs into place (see `publishing`)."""
    _PUBLISHING[0] = True
    try:
        yield
    finally:
        _PUBLISHING[0] = False


def publishing() -> bool:
    """Whether a staged folder is being moved into place right now (a signal
    handler then lets it finish)."""
    return _PUBLISHING[0]


class OutputError(InputError):
    """`--output` cannot be written: a file where a folder is wanted, one of the
    command's inputs, an unwritable place, or outputs that exist already."""


class OutputLockedError(TfpOodError, RuntimeError):
    """Another live process holds the lock of the same output."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Alive, another user's.
        return True
    return True


@contextlib.contextmanager
def hold_lock(path: str, busy: str, advice: str,
              error: Type[Exception] = OutputLockedError) -> Iterator[None]:
    """Holds the lock file `path` while the block runs.

    Args:
      path: the lock file.
      busy: what a holder is doing, for the message (e.g. 'runs/x is being trained').
      advice: what to do about a live holder on this machine.
      error: the exception raised for a live holder.

    The lock names the process and the machine that hold it and is removed on
    any exit of the block; after a crash (SIGKILL, power loss) it is left
    behind, and the next process on the same machine sees that its holder is
    gone and takes it over. A holder on another machine is never taken over.
    """
    me = {'pid': os.getpid(), 'host': socket.gethostname()}
    while True:
        try:
            with _signals_deferred():  # Created, written and registered, or not at all.
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                with os.fdopen(fd, 'w') as f:
                    json.dump(me, f)
                _LOCKS.add(path)
        except FileExistsError:
            try:
                with open(path) as f:
                    holder = json.load(f)
                pid, host = int(holder['pid']), str(holder['host'])
            except (OSError, ValueError, KeyError, TypeError):
                pid, host = None, me['host']  # Unreadable: a crash while writing it.
            if pid is not None and host != me['host']:
                raise error(f'{busy} by process {pid} on {host} (lock {path}); if that run '
                            f'is gone, delete the lock file.') from None
            if pid is not None and _process_alive(pid):
                raise error(f'{busy} by process {pid} on this machine (lock {path}); '
                            f'{advice}.') from None
            logging.warning('Taking over the stale lock %s (its process %s is gone).',
                            path, pid)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        break
    try:
        yield
    finally:
        _LOCKS.discard(path)
        try:
            with open(path) as f:
                mine = json.load(f) == me
        except (OSError, ValueError):
            mine = False
        if mine:
            os.remove(path)


def _overlaps(output: str, given: str, folder: bool) -> bool:
    """Whether writing `output` could replace `given`: the same path, `output`
    inside `given`, or (a folder output) `given` inside `output`."""
    output, given = os.path.realpath(output), os.path.realpath(given)

    def inside(a, b):
        return a.startswith(b.rstrip(os.sep) + os.sep)

    return output == given or inside(output, given) or (folder and inside(given, output))


def check_output(path: str, folder: bool, names: Sequence[str] = (),
                 overwrite: bool = False, inputs: Iterable[str] = ()) -> None:
    """Refuses an output before any work is done (see the module docstring).

    Args:
      path: the output: a folder (`folder=True`, holding `names`) or a file.
      inputs: the paths the command reads (models, fits, image folders, data).

    Raises:
      OutputError: with a one-line message naming the problem and the fix.
    """
    for given in inputs:
        if given and _overlaps(path, given, folder):
            raise OutputError(f'--output {path} is, holds or lies inside {given}, which this '
                              f'command reads; choose another output so that nothing it '
                              f'reads is replaced.')
    if os.path.lexists(path):
        if folder and not os.path.isdir(path):
            raise OutputError(f'--output {path} is a file, not a folder.')
        if not folder and os.path.isdir(path):
            raise OutputError(f'--output {path} is a folder, not a file.')
    existing = ([n for n in names if os.path.lexists(os.path.join(path, n))] if folder
                else [os.path.basename(path)] if os.path.lexists(path) else [])
    if existing and not overwrite:
        shown = [os.path.join(path, n) for n in existing] if folder else [path]
        raise OutputError(f'{", ".join(shown)} already exist(s); pass --overwrite to replace.')
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):  # The nearest ancestor that exists.
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(f'--output {path} lies under {parent}, which is a file.')
    writable = path if folder and os.path.isdir(path) else parent
    if not os.access(writable, os.W_OK | os.X_OK):
        raise OutputError(f'--output {path}: {writable} is not writable.')


@contextlib.contextmanager
def staged_folder(path: str, names: Sequence[str], overwrite: bool = False,
                  inputs: Iterable[str] = ()) -> Iterator[str]:
    """Yields a staging folder whose files are published to `path` at the end.

    `path` is checked first (`check_output`), and a lock `<path>.lock` beside it
    is held for the whole block, so a second command writing the same folder
    is refused at once instead of replacing the first one's outputs. Only the
    files of `names` may be written into the staging folder.

    Raises:
      OutputError: `path` cannot be written (before any work).
      OutputLockedError: another live command is writing `path`.
    """
    check_output(path, True, names, overwrite, inputs)
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    with hold_lock(path + '.lock', f'{path} is being written', 'wait for it, or choose '
                   'another --output', OutputLockedError):
        with temporary_folder(parent, f'.{os.path.basename(path)}.staging-') as staging:
            yield staging
            written = sorted(os.listdir(staging))
            unexpected = sorted(set(written) - set(names))
            if unexpected:
                raise AssertionError(f'staged outputs {unexpected} are not among {names}')
            if os.path.exists(path):
                check_output(path, True, names, overwrite)  # What appeared meanwhile.
            with publishing_now():
                if not os.path.exists(path):
                    os.rename(staging, path)  # The whole folder at once.
                else:
                    for name in written:
                        target = os.path.join(path, name)
                        if os.path.isdir(target) and not os.path.islink(target):
                            shutil.rmtree(target)  # One of `names`, replaced: --overwrite.
                        os.replace(os.path.join(staging, name), target)
