r"""How long a program of the package takes to start: Keras 3's shim against tf_keras.

`tfp_ood`'s own programs (`tfp-ood`, `python -m tfp_ood...`, the scripts of
`examples/` and `benchmarks/`) set `TF_USE_LEGACY_KERAS=1` before TensorFlow
is imported (`tfp_ood._startup`), so that `import tensorflow` points
`tf.keras` at `tf_keras`, the Keras that TFP and our networks use, instead of
building its Keras 3 shim. TensorFlow reads the setting at import, so each
measurement is a child process: `python -c IMPORTS` with the setting `0`
(TensorFlow's default) and `1`, alternating for `--rounds` rounds (the first
of the pair alternating, so a machine whose speed drifts moves both alike).
Each figure is the median wall time over the rounds, with the spread, and
`legacy_over_default` is the median of the rounds' ratios.

`IMPORTS` (`--imports`, default: the modules `tfp-ood score` needs) are
imported and TensorFlow's device list is read, as the package's programs do
before their first op.

    python benchmarks/startup.py --json benchmarks/results/startup.json   # ~2 min
    python benchmarks/startup.py --rounds 1                               # tests
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {'default': '0', 'legacy': '1'}  # TF_USE_LEGACY_KERAS
IMPORTS = 'tfp_ood.evaluate tfp_ood.models tfp_ood.export'


def _child(setting: str, imports: str) -> float:
    """Seconds for a fresh interpreter to import `imports` with the setting."""
    code = (f'import tfp_ood, {", ".join(imports.split())}, tensorflow as tf\n'
            'tf.config.list_physical_devices()\n'
            'import json; print(json.dumps(tf.keras.__name__))')
    env = dict(os.environ, TF_USE_LEGACY_KERAS=setting, TF_CPP_MIN_LOG_LEVEL='2')
    start = time.perf_counter()
    run = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    seconds = time.perf_counter() - start
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:])
    keras = json.loads(run.stdout.strip().splitlines()[-1]).split('.')[0]
    expected = 'tf_keras' if setting == '1' else 'keras'
    if keras != expected:
        raise RuntimeError(f'TF_USE_LEGACY_KERAS={setting} gave tf.keras from {keras}')
    return seconds


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rounds', type=int, default=8)
    p.add_argument('--imports', default=IMPORTS,
                   help=f'modules to import, space-separated (default: {IMPORTS})')
    p.add_argument('--json', default=None, help='write the results here')
    args = p.parse_args(argv)
    from machine import machine, write_json
    seconds = {name: [] for name in SETTINGS}
    order = list(SETTINGS)
    for i in range(args.rounds):
        for name in (order if i % 2 == 0 else order[::-1]):
            seconds[name].append(_child(SETTINGS[name], args.imports))
        print(f'round {i + 1}: ' + ', '.join(f'{n} {v[-1]:.2f} s' for n, v in seconds.items()),
              flush=True)
    ratios = [legacy / default for default, legacy in zip(seconds['default'], seconds['legacy'])]
    result = {'machine': machine(), 'imports': args.imports.split(), 'rounds': args.rounds}
    for name, values in seconds.items():
        result[f'{name}_seconds'] = statistics.median(values)
        result[f'{name}_spread'] = [min(values), max(values)]
        result[f'{name}_per_round'] = values
    result.update(legacy_over_default=statistics.median(ratios),
                  legacy_over_default_per_round=ratios)
    print(f'start-up: Keras 3 shim {result["default_seconds"]:.2f} s, tf_keras '
          f'{result["legacy_seconds"]:.2f} s (median ratio {result["legacy_over_default"]:.2f})')
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == '__main__':
    main()
