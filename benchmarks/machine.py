"""What a benchmark ran on: the CPU, its instruction sets, the software; and
how its results are written.

Every benchmark's JSON carries `machine()` beside its figures, because the
same command runs two to three times slower on a CPU without AVX-512 (where
TensorFlow leaves oneDNN off by itself) than on one with it.
"""

import json
import os
import platform
import sys
from typing import Dict, List

# Instruction sets that decide TensorFlow's speed on a CPU, as /proc/cpuinfo spells them.
INSTRUCTION_SETS = ('avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'avx512_fp16',
                    'amx_tile', 'amx_bf16', 'amx_int8')


def _cpuinfo(field: str, path: str) -> str:
    """The first `field: value` line's value in /proc/cpuinfo ('' where there is none)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return ''


def cpu_flags(path: str = '/proc/cpuinfo') -> List[str]:
    """The CPU's flags (empty where /proc/cpuinfo does not exist)."""
    return _cpuinfo('flags', path).split()


def cpu_model(path: str = '/proc/cpuinfo') -> str:
    return _cpuinfo('model name', path) or platform.processor() or platform.machine()


def machine_class(flags) -> str:
    """'AMX' (AVX-512 with AMX), 'AVX-512', 'AVX2' or 'other': the classes whose
    TensorFlow speeds differ (docs/performance.md)."""
    flags = set(flags)
    if 'amx_tile' in flags:
        return 'AMX'
    if 'avx512f' in flags:
        return 'AVX-512'
    if 'avx2' in flags:
        return 'AVX2'
    return 'other'


def cpuid_masked(flags) -> bool:
    """Whether CPUID hides the AVX-512 that /proc/cpuinfo lists from this process
    (run by benchmarks/avx2_only.py): NumPy reads its CPU's features with CPUID."""
    from numpy._core._multiarray_umath import __cpu_features__ as seen
    return 'avx512f' in flags and not seen.get('AVX512F', True)


def machine() -> Dict:
    """The CPU (model, class, instruction sets) as this process sees it, core
    count, oneDNN setting and versions."""
    flags = cpu_flags()
    masked = cpuid_masked(flags)
    if masked:  # What TensorFlow and oneDNN see, and the CPU underneath.
        real, flags = machine_class(flags), [f for f in flags
                                             if not f.startswith(('avx512', 'amx'))]
    out = {'cpu': cpu_model(), 'class': machine_class(flags),
           'instruction_sets': [s for s in INSTRUCTION_SETS if s in flags],
           'cpus': os.cpu_count(), 'platform': platform.platform(),
           'python': sys.version.split()[0],
           'TF_ENABLE_ONEDNN_OPTS': os.environ.get('TF_ENABLE_ONEDNN_OPTS')}
    if masked:
        out['cpuid_masked'] = f'AVX2-only CPUID (benchmarks/avx2_only.py) on an {real} CPU'
    if 'tensorflow' in sys.modules:
        import tensorflow as tf
        from tensorflow.python.util import _pywrap_util_port
        out['tensorflow'] = tf.__version__
        out['onednn_enabled'] = bool(_pywrap_util_port.IsMklEnabled())  # As TF runs it.
    if 'tensorflow_probability' in sys.modules:
        import tensorflow_probability as tfp
        out['tfp'] = tfp.__version__
    return out


def write_json(path: str, result: Dict) -> None:
    """Writes a benchmark's results, creating the folder; atomically, so an
    interrupted run leaves the previous complete file, never half of one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(result, f, indent=1)
    os.replace(path + '.tmp', path)
