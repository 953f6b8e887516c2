"""Your own images, end to end: a density model trained on a folder of them, a
detector fitted on it and calibrated on held-out images of it, exported as a
SavedModel, and run on new images.

    python examples/own_data.py --images-dir my_images/ --new-images-dir new_images/
    python examples/own_data.py --demo   # the embedded CIFAR-10 sample; SVHN as new images

The defaults (a CPU-sized Glow, 600 steps) take about seven minutes on two CPU
cores (docs/own-data.md); `--config paper --steps 20000` is the paper's size,
for a GPU.
"""

import argparse
import os
import tempfile

import numpy as np

from tfp_ood import data, detectors, export, inputs, train
from tfp_ood.metrics import ood_metrics

import tensorflow as tf  # After tfp_ood: imported without its start-up notices.


def _demo_folders(root):
    """The embedded CIFAR-10 and SVHN test samples written as PNG folders."""
    for name in ('cifar10', 'svhn_cropped'):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i, image in enumerate(data.images_array(data.load(name, 'test', source='samples'))):
            tf.io.write_file(os.path.join(root, name, f'{i:04d}.png'), tf.io.encode_png(image))
    return os.path.join(root, 'cifar10'), os.path.join(root, 'svhn_cropped')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--images-dir', help='your in-distribution images (a folder)')
    p.add_argument('--new-images-dir', help='images to run the detector on')
    p.add_argument('--demo', action='store_true', help='CIFAR-10 sample in, SVHN sample new')
    p.add_argument('--model', default='glow', help='glow, cv_glow, pixelcnn, vae (default: glow)')
    p.add_argument('--config', default='cpu', help='cpu (default), paper or tiny')
    p.add_argument('--steps', type=int, default=600, help='training steps (default: 600)')
    p.add_argument('--resize', action='store_true', help='resize images of other sizes')
    p.add_argument('--out', default='results/own_data', help='results folder')
    args = p.parse_args(argv)
    if args.demo:
        args.images_dir, args.new_images_dir = _demo_folders(tempfile.mkdtemp())
    if not args.images_dir:
        p.error('pass --images-dir (and --new-images-dir), or --demo')
    images = inputs.read_folder(args.images_dir, resize=args.resize, progress=True)
    print('\n'.join(images.describe()) or f'{len(images)} images of {images.images.shape[1:]}')
    # 80% to learn from (the model, then the detector), 20% held out (the threshold).
    known, held_out = images.split(0.2, seed=0)
    config = train.TrainConfig(num_steps=args.steps, eval_every=max(args.steps // 5, 1))
    model, _ = train.train_on_images(args.model, args.config, known.images,
                                     os.path.join(args.out, 'run'), config,
                                     {'held_out': held_out.images}, {'images_dir': args.images_dir})
    model_dir = export.export(model, os.path.join(args.out, 'model'), overwrite=True)
    name = 'density_of_states_terms' if model.is_flow else 'density_of_states'
    fitted = detectors.fit_detector(name, [model_dir], known.images, held_out.images,
                                    provenance={'images_dir': args.images_dir}, progress=True)
    fitted.save(os.path.join(args.out, 'detector.json'))
    saved = fitted.export(os.path.join(args.out, 'detector'), overwrite=True)
    serve = tf.saved_model.load(saved).signatures['serving_default']  # Plain TensorFlow.
    print(f'{name}: threshold {fitted.calibration.threshold:.4g} keeps 95% of held-out images')
    if args.new_images_dir:
        new = inputs.read_folder(args.new_images_dir, model.image_shape, resize=args.resize)
        result = serve(images=tf.constant(new.images))
        print(f'{new.name}: {np.mean(result["is_ood"]):.1%} of {len(new)} images flagged '
              f'out of distribution (SavedModel at {saved})')
        if args.demo:
            held = serve(images=tf.constant(held_out.images))['ood_score']
            auroc = ood_metrics(held, result['ood_score'], nonfinite='most_ood')['auroc']
            print(f'AUROC held-out CIFAR-10 against SVHN: {auroc:.3f}')


if __name__ == '__main__':
    main()
