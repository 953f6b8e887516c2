"""Runs a command as on an AVX2-only CPU, on a CPU with AVX-512.

    python benchmarks/avx2_only.py --check                                    # what is seen
    python benchmarks/avx2_only.py -- python examples/cifar_svhn.py --no-progress
    python benchmarks/avx2_only.py -- python -m pytest -q -n 2 tests

TensorFlow's speed depends on the CPU's class (docs/performance.md): it leaves
oneDNN off by itself without AVX-512, oneDNN picks its kernels by what the CPU
has, and TensorFlow decides from AVX-512 whether oneDNN runs bfloat16. Limiting
oneDNN alone (`ONEDNN_MAX_CPU_ISA=AVX2`) changes only the second: TensorFlow
still sees AVX-512, and its bfloat16 graphs then ask oneDNN for kernels it no
longer has. Here every decision is the AVX2-only CPU's: the command runs with
`avx2_only.c` preloaded, which makes the CPUID instruction fault (Linux's
ARCH_SET_CPUID, on CPUs whose /proc/cpuinfo lists `cpuid_fault`) and answers it
with the CPU's own values less AVX-512, AMX and AVX-VNNI; glibc's string
functions are told the same (`GLIBC_TUNABLES`). Every program the command
starts inherits it.

What stays this machine's are its cores: their clock, caches and memory. An
AVX2-only CPU of an older generation also runs Python and the graphs'
bookkeeping slower, which no mask shows: a time measured here is a lower bound
for that class.

The library is compiled with gcc on first use, into the temporary folder.
The command replaces this process: its exit status is the command's (2, with one
line, when the mask cannot be set up).
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'avx2_only.c')
# glibc's own choice of string functions (read before the library loads).
GLIBC_HWCAPS = 'glibc.cpu.hwcaps=-AVX512F,-AVX512DQ,-AVX512CD,-AVX512BW,-AVX512VL'
# What `--check` prints: the CPU's features as NumPy and TensorFlow read them.
CHECK = '''
from numpy._core._multiarray_umath import __cpu_features__ as seen
print('NumPy sees:', ' '.join(k for k in ('AVX2', 'FMA3', 'AVX512F', 'AVX512BF16', 'AVX512FP16')
                              if seen.get(k)))
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
print('TensorFlow leaves oneDNN', 'on' if _pywrap_util_port.IsMklEnabled() else 'off',
      'by itself (TF_ENABLE_ONEDNN_OPTS unset)')
'''


class SetupError(Exception):
    pass


def library(source: str = SOURCE) -> str:
    """The preload library, compiled once per version of its source."""
    with open('/proc/cpuinfo') as f:
        if 'cpuid_fault' not in f.read().split():
            raise SetupError('this CPU cannot make CPUID fault (no cpuid_fault in /proc/cpuinfo), '
                             'so what a process sees cannot be masked here.')
    with open(source, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f'tfp_ood_avx2_only_{digest}.so')
    if not os.path.exists(path):
        compiler = shutil.which('gcc') or shutil.which('cc')
        if not compiler:
            raise SetupError('no C compiler (gcc) to build avx2_only.c: apt install gcc.')
        partial = f'{path}.{os.getpid()}'
        built = subprocess.run([compiler, '-O2', '-shared', '-fPIC', '-o', partial, source, '-ldl'],
                               capture_output=True, text=True)
        if built.returncode:
            raise SetupError(f'gcc could not build {source}:\n{built.stderr}')
        os.replace(partial, path)
    return path


def environment(env=None) -> dict:
    """`env` (default: this process's) with the mask preloaded for every program started."""
    env = dict(os.environ if env is None else env)
    env['LD_PRELOAD'] = ' '.join(filter(None, (library(), env.get('LD_PRELOAD'))))
    env['GLIBC_TUNABLES'] = ':'.join(filter(None, (env.get('GLIBC_TUNABLES'), GLIBC_HWCAPS)))
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--check', action='store_true',
                   help='print what NumPy and TensorFlow see under the mask, then exit')
    p.add_argument('command', nargs=argparse.REMAINDER, help='the command, after --')
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ['--'] else args.command
    if args.check:
        command = [sys.executable, '-c', CHECK]
    if not command:
        p.error('give a command after --, or --check')
    try:
        env = environment()
    except SetupError as e:
        print(f'avx2_only.py: error: {e}', file=sys.stderr)
        return 2
    if args.check:
        env.pop('TF_ENABLE_ONEDNN_OPTS', None)
    if not shutil.which(command[0]):
        print(f'avx2_only.py: error: no program {command[0]!r}', file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execvpe(command[0], command, env)  # Its exit status and signals are the command's.


if __name__ == '__main__':
    sys.exit(main())
