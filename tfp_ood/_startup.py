"""TensorFlow imported without its start-up notices on a machine with no GPU.

Importing TensorFlow, and its first look at the devices, print lines such as
`E0000 ... cuda_platform.cc:52] failed call to cuInit: ...` and `I0000 ...
cudart_stub.cc:31] Could not find cuda drivers on your machine` from C++,
before `TF_CPP_MIN_LOG_LEVEL` can act (absl writes everything to stderr until
it is initialised). On a CPU-only machine a user reads them as errors.

`install()` (run by `import tfp_ood`) does not import TensorFlow: the
command line answers `--help` without it. It puts an import hook in front of
Python's finders, so that whenever TensorFlow is first imported afterwards (by
a tfp_ood module or by the user's own `import tensorflow`) the import, and a
listing of the physical devices, run with file descriptor 2 redirected to a
temporary file; then every line of it that is not one of those notices is
written back: nothing else is hidden, and a real error during the import
still reaches stderr (and raises). Listing devices does not initialise the
runtime, so `tf.config.set_visible_devices`, memory growth and a
multi-worker strategy can still be set up afterwards. Nothing is filtered
when `TF_CPP_MIN_LOG_LEVEL=0` asks for every message.

It also turns on TensorFlow's oneDNN kernels (`TF_ENABLE_ONEDNN_OPTS=1`),
which TensorFlow leaves off by itself on CPUs without AVX-512: scoring 1,000
CIFAR-10 images through the shipped Glow took 10.2 s without them and 4.1 s
with them on a 2-core AVX2-only AMD EPYC. A value the user set is kept
(`TF_ENABLE_ONEDNN_OPTS=0` turns them off).

When the process is one of the package's own programs (the `tfp-ood`
command, `python -m tfp_ood...`, a script of the repository's `examples/` or
`benchmarks/`), `tf.keras` is also pointed at `tf_keras`
(`TF_USE_LEGACY_KERAS=1`), the Keras that TensorFlow Probability and our
networks use: `import tensorflow` then skips building its Keras 3 shim, and a
program starts about 1.5 s sooner (5.4 s -> 3.8 s to import the scoring
modules on a 2-core Xeon with AMX). A library import leaves `tf.keras` as the
user's program has it, and a value the user set is kept.
"""

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

# The notices, one pattern per line (C++ log lines start with a severity
# letter and the date as four digits).
_NOTICES = re.compile(
    r'^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR'
    r'|[IWE]\d{4} .*\b(cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics|cuda_dnn'
    r'|cuda_fft|cuda_blas|port|cpu_feature_guard)\.cc:\d+\] .*'
    r'|To enable the following instructions: .*in other operations, rebuild TensorFlow'
    r' with the appropriate compiler flags\.)$')


def is_notice(line: str) -> bool:
    """Whether `line` is one of TensorFlow's start-up notices."""
    return bool(_NOTICES.match(line.rstrip('\r\n')))


# The real file descriptor 2 while `_filtered_stderr` has redirected it.
_REAL_STDERR = [None]


def write_stderr(text: str) -> None:
    """Writes `text` to the process's real stderr, also while TensorFlow is being
    imported with stderr filtered (a signal handler's last words)."""
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    os.write(_REAL_STDERR[0] if _REAL_STDERR[0] is not None else 2, text.encode())


@contextlib.contextmanager
def _filtered_stderr():
    """Collect what is written to file descriptor 2; write back all but the notices."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable descriptor 2
        yield
        return
    with tempfile.TemporaryFile(mode='w+b') as captured:
        os.dup2(captured.fileno(), 2)
        _REAL_STDERR[0] = saved
        try:
            yield
        finally:
            _REAL_STDERR[0] = None
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode('utf-8', 'replace').splitlines(True)
                    if not is_notice(line)]
            if kept:
                os.write(2, ''.join(kept).encode())


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with the notices filtered out of stderr."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        quiet = os.environ.get('TF_CPP_MIN_LOG_LEVEL') != '0'
        with _filtered_stderr() if quiet else contextlib.nullcontext():
            self._loader.exec_module(module)
            module.config.list_physical_devices()


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as the other finders do, with a `_QuietLoader`; once."""

    def find_spec(self, fullname, path, target=None):
        del path, target
        if fullname != 'tensorflow':
            return None
        uninstall()
        spec = importlib.util.find_spec(fullname)  # The finders after this one.
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


_FINDER = _QuietFinder()


_REPOSITORY = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_PROGRAM_FOLDERS = ('examples', 'benchmarks')


def is_own_program(argv=None) -> bool:
    """Whether the command line `argv` (default: this process's, `sys.orig_argv`)
    runs one of the package's programs: `tfp-ood ...`, `python -m tfp_ood...`,
    or `python <repository>/examples/... | benchmarks/...`."""
    if argv is None:
        argv = getattr(sys, 'orig_argv', None) or [sys.executable] + sys.argv
    if argv and os.path.basename(argv[0]) == 'tfp-ood':
        return True
    words = iter(argv[1:])
    for word in words:
        if word == '-m':
            return next(words, '').split('.')[0] == 'tfp_ood'
        if word in ('-X', '-W'):  # Options with a value.
            next(words, None)
        elif word == '-c' or word == '-':
            return False
        elif not word.startswith('-'):  # The script.
            if os.path.basename(word) == 'tfp-ood':
                return True
            path = os.path.realpath(word)
            return any(path.startswith(os.path.join(_REPOSITORY, folder) + os.sep)
                       for folder in _PROGRAM_FOLDERS)
    return False


def install() -> None:
    """Sets the oneDNN default (and, in the package's own programs, the Keras
    one) and, unless TensorFlow is imported already, makes its first import
    quiet (see the module's docstring)."""
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
    if 'tensorflow' not in sys.modules and is_own_program():
        os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
    if 'tensorflow' not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Removes the import hook (`install`), if it is there."""
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_FINDER)


def import_tensorflow():
    """Imports TensorFlow now, quietly (as `install` arranges)."""
    install()
    import tensorflow  # noqa: F401
