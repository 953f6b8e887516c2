"""What the experiment scripts share: flags, where images come from, and models.

Models come from one of three places:

- the pretrained SavedModels in `--models-dir` (default `saved_models/`);
- `--retrain`: trained from scratch here (`--config cpu` by default, `paper`
  for a GPU) into `--workdir`, then exported to `<out>/models/`;
- `--untrained`: freshly initialised (ActNorm's data-dependent
  initialisation only), to check the pipeline.

Images come from `--data-dir` (local `<name>_<split>.npz` arrays, e.g.
`../shared/data`), from TFDS with `--source tfds` (downloads), or, with neither,
from the 2,000-image samples embedded in the package.
"""

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from tfp_ood import data, export, report, train
from tfp_ood.config import GLOW_CONFIG_NAMES, GlowConfig
from tfp_ood.models import FlowModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Images per set scored under a VAE by default: its importance-weighted bound
# costs K=100 decoder passes per image (about 5 images/s on 2 CPU cores).
VAE_IMAGES = 1000
VAE_IMAGES_SAMPLES = 50
VAE_IMAGES_HELP = (f'images per set scored under a VAE (K=100 decoder passes per image; '
                   f'default: {VAE_IMAGES}, or {VAE_IMAGES_SAMPLES} on the embedded samples; '
                   f'0: all)')


def parser(description: str, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--data-dir', default=None,
                   help='directory of <name>_<split>.npz arrays (default: $TFP_OOD_DATA_DIR; '
                        'with neither this nor --source tfds, the embedded samples)')
    p.add_argument('--source', default='auto', choices=data.SOURCES,
                   help='where images come from (default: auto)')
    p.add_argument('--out', default=default_out, help='results folder')
    p.add_argument('--models-dir', default=os.path.join(REPO, 'saved_models'),
                   help='pretrained SavedModels (default: saved_models/)')
    mode = p.add_mutually_exclusive_group()
    mode.add_argument('--retrain', action='store_true',
                      help='train the models from scratch first (see --config, --steps)')
    mode.add_argument('--untrained', action='store_true',
                      help='score under freshly initialised models (checks the pipeline)')
    p.add_argument('--config', default='cpu', choices=GLOW_CONFIG_NAMES,
                   help='architecture for --retrain / --untrained (default: cpu; paper '
                        'for a GPU)')
    p.add_argument('--steps', type=int, default=10000, help='training steps for --retrain')
    p.add_argument('--batch-size', type=int, default=64, help='training batch for --retrain')
    p.add_argument('--workdir', default='runs', help='run directories for --retrain')
    p.add_argument('--num-images', type=int, default=None,
                   help='score at most this many images per set')
    p.add_argument('--num-synthetic', type=int, default=1000,
                   help='constant and random images to score')
    p.add_argument('--no-progress', dest='progress', action='store_false',
                   help='no progress bars')
    return p


class Source:
    """Where the images of an experiment come from, decided once from the flags."""

    def __init__(self, args):
        data_dir = args.data_dir or os.environ.get(data.DATA_DIR_ENV)
        if args.source == 'samples' or (args.source == 'auto' and not data_dir):
            self.source, self.data_dir, self.samples = 'samples', None, True
        else:
            self.source, self.data_dir, self.samples = args.source, data_dir, False
        self.tfds = args.source == 'tfds'
        self.num_images = args.num_images

    def vae_images(self, requested):
        """How many images per set a VAE scores: `requested` (0: all), else the default."""
        if requested is None:
            requested = VAE_IMAGES_SAMPLES if self.samples else VAE_IMAGES
        return requested or None

    def load(self, name: str, split: str):
        ds = data.load(name, split, data_dir=self.data_dir, source=self.source,
                       download=self.tfds)
        return ds.take(self.num_images) if self.num_images else ds

    def note(self) -> str:
        if not self.samples:
            return ''
        return ('NOTE: no data directory was given, so this run scored the 2,000-image '
                'test samples embedded in the package (no training sets). For the full '
                'test sets pass --data-dir DIR (local <name>_<split>.npz arrays, e.g. '
                '../shared/data) or --source tfds (downloads with TFDS).')


def get_model(args, source: Source, name: str, family: str, dataset: str, train_split: str,
              eval_specs: Sequence) -> Optional[report.ModelEntry]:
    """The model `name` (e.g. `glow_cifar10`) from the place the flags choose.

    Returns `None` when the pretrained model is not in `--models-dir`.
    """
    coupling = 'affine' if family == 'glow' else 'additive'
    if args.retrain:
        config = train.TrainConfig(num_steps=args.steps, batch_size=args.batch_size,
                                   eval_every=max(1, min(1000, args.steps)),
                                   checkpoint_every=max(1, min(500, args.steps)))
        model, _ = train.train_on_dataset(
            family, args.config, dataset, train_split, os.path.join(args.workdir, name),
            config, eval_specs=eval_specs, data_dir=source.data_dir, source=source.source,
            download=source.tfds, progress=args.progress)
        export.export(model, os.path.join(args.out, 'models', name), overwrite=True,
                      provenance=_provenance(os.path.join(args.workdir, name)))
        return report.ModelEntry(model, family, dataset)
    if args.untrained:
        shape = data.DATASETS[dataset].image_shape
        config = GlowConfig.named(args.config, shape, coupling=coupling)
        model = FlowModel.from_config(config)
        init_split = 'test' if source.samples else train_split
        model.initialize(data.images_array(source.load(dataset, init_split), limit=512))
        return report.ModelEntry(model, family, f'untrained ({dataset} init)')
    path = os.path.join(args.models_dir, name)
    if not os.path.exists(path):
        print(f'{name}: no pretrained model at {path}; skipped (use --retrain to train '
              f'it, or --models-dir).', file=sys.stderr)
        return None
    model = export.load(path)
    return report.ModelEntry(model, model.get_config()['family'], dataset)


def _provenance(workdir: str) -> dict:
    with open(os.path.join(workdir, 'provenance.json')) as f:
        return json.load(f)


def print_report(outcome: dict, source: Source, in_set: str, out_set: str, out: str) -> None:
    with open(os.path.join(out, 'bpd_table.md')) as f:
        print('Bits/dim (lower = more likely):\n' + f.read())
    for name, m in outcome['metrics'].items():
        print(f'{name}: AUROC {m["auroc"]:.3f} of raw likelihood ({in_set} in, {out_set} '
              f'out; 0.5 = chance, below 0.5 = the model prefers {out_set})')
    if source.note():
        print(source.note())
    print(f'Results written to {os.path.abspath(out)}')
