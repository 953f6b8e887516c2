"""The example and benchmark scripts as modules, for tests that call their functions.

`load('examples/cifar_svhn.py')` imports the script under a name of its own
(`examples.cifar_svhn`), so it cannot shadow or be shadowed by a package
module of the same name, and leaves `sys.path` as it was. The modules scripts
import from their own folder (`benchmarks/run.py`) are imported the same way,
under the bare name the scripts import them by.
"""

import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Sibling modules the scripts import by bare name, per folder.
_SIBLINGS = {'benchmarks': ('run',)}


def _import(path: str, name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load(relative_path: str):
    """The script at `relative_path` (from the repository root) as a module."""
    folder, filename = os.path.split(relative_path)
    stem = os.path.splitext(filename)[0]
    for sibling in _SIBLINGS.get(folder, ()):
        _import(os.path.join(REPO, folder, sibling + '.py'), sibling)
    if stem in _SIBLINGS.get(folder, ()):  # Imported above, under its bare name.
        return sys.modules[stem]
    return _import(os.path.join(REPO, relative_path), f'{folder}.{stem}')
