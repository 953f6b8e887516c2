"""Small real samples embedded in the package, so the examples run anywhere.

Each file `<name>_test.npz` holds 2,000 test images (uint8) and their labels:

| file | images | taken from |
|---|---|---|
| `cifar10_test.npz` | 2,000 | CIFAR-10 test, images 0-1,999 |
| `svhn_cropped_test.npz` | 2,000 | SVHN test, images 8,000-9,999 (not in the training slice) |
| `fashion_mnist_test.npz` | 2,000 | FashionMNIST test, images 0-1,999 |
| `mnist_test.npz` | 2,000 | MNIST test, images 0-1,999 |

`tfp_ood.data.load(name, 'test', source='samples')` reads them (slicing
applies to the sample). `manifest.json` records the source file, its SHA-256
and the indices. Regenerate from full arrays with

    python -m tfp_ood.samples DATA_DIR
"""

import hashlib
import json
import os

import numpy as np

from tfp_ood.errors import InputError

__all__ = ['SAMPLES', 'SAMPLES_DIR', 'build']

SAMPLES_DIR = os.path.dirname(os.path.abspath(__file__))
# name -> (first, last + 1) of the source test split.
SAMPLES = {
    'cifar10': (0, 2000),
    'svhn_cropped': (8000, 10000),
    'fashion_mnist': (0, 2000),
    'mnist': (0, 2000),
}


def build(data_dir: str, out_dir: str = SAMPLES_DIR) -> dict:
    """Writes the sample files from `<data_dir>/<name>_test.npz`; returns the manifest."""
    manifest = {}
    for name, (start, stop) in SAMPLES.items():
        source = os.path.join(data_dir, f'{name}_test.npz')
        with open(source, 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        with np.load(source) as f:
            images, labels = f['images'][start:stop], f['labels'][start:stop]
        if len(images) != stop - start:
            raise InputError(f'{source} has {len(images) + start} images; need {stop}.')
        np.savez_compressed(os.path.join(out_dir, f'{name}_test.npz'),
                            images=images, labels=labels)
        manifest[name] = {'file': f'{name}_test.npz', 'source': os.path.basename(source),
                          'source_sha256': digest, 'indices': [start, stop],
                          'shape': list(images.shape)}
    with open(os.path.join(out_dir, 'manifest.json'), 'w') as f:
        json.dump(manifest, f, indent=2)
    return manifest
