r"""Throughput and memory of tfp_ood, against TFP's own `tfb.Glow` and the machine's limit.

Everything is measured in one process on the machine at hand, peers side by
side with runs alternating (so background load hits both alike), median of
the repeats:

- scoring (images/s of the evaluator's traced `score_batch`) and training
  (images/s of `fit`'s traced step: forward, backward, clipping, Adam) of
  Glow, CV-Glow, PixelCNN and both VAEs, at their `cpu` and `paper` configs,
  batch sizes 16, 64 and 256;
- the same Glow architecture built with TFP's `tfb.Glow` (coupling and exit
  networks matched layer for layer, same parameter count) scored and trained
  in the same process; `*_vs_tfp` are our/TFP images/s ratios;
- the achieved GFLOP/s of our Glow (convolution FLOPs counted analytically)
  against a float32 matmul peak measured in the same run;
- peak resident memory (RSS) of scoring and of training: the process's peak
  during each phase and the increase over the RSS when the phase started. The
  full mode measures each family row in a fresh process (so its peak is that
  of TensorFlow plus that one model), killed and recorded as too large if it
  passes a memory limit, instead of the whole run dying to the OOM killer;
- how cost grows: images/s against batch size and image size (16x16, 32x32,
  64x64);
- XLA (`jit_compile=True`) against plain graphs, for scoring and training;
- bfloat16 coupling networks against float32 (the same weights, alternating),
  scoring and training at the `cpu` and compared sizes, with a bfloat16 matmul
  peak beside the float32 one, and the per-image bits/dim difference of the
  shipped `glow_cifar10` between the precisions on the embedded samples.

    python benchmarks/run.py --quick --json benchmarks/results/quick.json   # < 5 minutes
    python benchmarks/run.py --json benchmarks/results/full.json            # everything
    python benchmarks/run.py --json benchmarks/results/full.json --resume   # after a kill
    python benchmarks/run.py --smoke --json /tmp/smoke.json                 # tests: seconds

The JSON holds the headline numbers at the top level (`glow_score_vs_tfp`,
`glow_train_vs_tfp`, `cvglow_score_vs_tfp`, `glow_paper_score_fraction_of_peak`,
`glow_paper_score_images_per_s`, `glow_paper_train_images_per_s`,
`glow_paper_score_bf16_vs_fp32`, `glow_paper_train_bf16_vs_fp32`,
`bf16_max_abs_bpd_diff`, ...) and
every measurement under `measurements`.
"""

import argparse
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from tfp_ood import models, train
from tfp_ood.bijectors import coupling_network_fn, exit_network_fn
from tfp_ood.config import GlowConfig, named_config
from tfp_ood.models.base import dequantize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  (benchmarks/machine.py)

tfb, tfd = tfp.bijectors, tfp.distributions

HEADLINE_KEYS = ('glow_score_vs_tfp', 'glow_train_vs_tfp', 'cvglow_score_vs_tfp',
                 'glow_paper_score_fraction_of_peak', 'glow_paper_score_images_per_s',
                 'glow_paper_train_images_per_s')


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one mode measures."""

    name: str                         # The mode: smoke, quick or full.
    repeats: int                      # Timed repeats per measurement (median reported).
    min_seconds: float                # Calls per repeat grow until a repeat lasts this long.
    glow_compare: str                 # Glow config compared with tfb.Glow ('paper', 'tiny').
    compare_batch: int
    families: Sequence[str]           # Per-family throughput...
    family_configs: Sequence[str]     # ...at these named configs...
    family_batches: Sequence[int]     # ...and batch sizes.
    image_sizes: Sequence[int]        # Scaling with image size (Glow, family config).
    scaling_config: str
    matmul_size: int
    xla_configs: Sequence[str]        # Glow configs measured with and without XLA.
    isolate_rows: bool = False        # Each family row in its own process (memory-limited).


PLANS = {
    # The smoke run's family rows are the quick run's three: each row is the same
    # code with another model, and every family's model has its own tests.
    'smoke': Plan(name='smoke', repeats=1, min_seconds=0., glow_compare='tiny', compare_batch=4,
                  families=('glow', 'pixelcnn', 'vae'),
                  family_configs=('tiny',), family_batches=(4,), image_sizes=(16, 32),
                  scaling_config='tiny', matmul_size=256, xla_configs=('tiny',)),
    'quick': Plan(name='quick', repeats=3, min_seconds=0.5, glow_compare='paper', compare_batch=64,
                  families=('glow', 'pixelcnn', 'vae'), family_configs=('cpu',),
                  family_batches=(64,), image_sizes=(), scaling_config='cpu',
                  matmul_size=4096, xla_configs=()),
    'full': Plan(name='full', repeats=5, min_seconds=2.0, glow_compare='paper', compare_batch=64,
                 families=('glow', 'cv_glow', 'pixelcnn', 'vae', 'vae_rnvp'),
                 family_configs=('cpu', 'paper'), family_batches=(16, 64, 256),
                 image_sizes=(16, 32, 64), scaling_config='cpu', matmul_size=4096,
                 xla_configs=('small', 'cpu', 'paper'), isolate_rows=True),
}


def _rss_mib(pid) -> float:
    """Resident set size (MiB) of a process (`'self'` for this one); 0 once it has gone."""
    try:
        with open(f'/proc/{pid}/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20
    except (FileNotFoundError, ProcessLookupError):
        return 0.


class PeakRSS:
    """Peak resident set size (MiB) of this process while the block runs."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak_mib = interval, 0.
        self._stop = threading.Event()

    @staticmethod
    def current_mib() -> float:
        return _rss_mib('self')

    def _watch(self):
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self.current_mib())
            time.sleep(self.interval)

    @property
    def increase_mib(self) -> float:
        """Peak minus the RSS when the block started: what the block itself added."""
        return self.peak_mib - self.start_mib

    def __enter__(self):
        self.start_mib = self.peak_mib = self.current_mib()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, self.current_mib())


def alternate_rounds(fns: Dict[str, Callable[[], object]], repeats: int,
                     min_seconds: float, max_seconds: float = 120.) -> Dict[str, List[float]]:
    """Seconds per call of each function in each round, the functions run alternately.

    Each function is called twice first (tracing, then a timed warm-up call).
    A round calls each function `n` times, `n` chosen from the warm-up so that
    its share of a round lasts at least `min_seconds`; fewer rounds are made
    (at least one) when they would take more than `max_seconds` in all (a
    paper-size PixelCNN step at batch 256 takes minutes on a CPU). Round `r`
    of one function ran next to round `r` of every other, so ratios taken
    round by round see the same background load.
    """
    calls, per_call = {}, {}
    for name, fn in fns.items():
        fn()  # Traces.
        start = time.perf_counter()
        fn()
        per_call[name] = time.perf_counter() - start
        calls[name] = max(1, int(np.ceil(min_seconds / max(per_call[name], 1e-6))))
    round_seconds = sum(calls[n] * per_call[n] for n in fns)
    repeats = max(1, min(repeats, int(max_seconds / max(round_seconds, 1e-6))))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            times[name].append((time.perf_counter() - start) / calls[name])
    return times


def alternate(fns: Dict[str, Callable[[], object]], repeats: int,
              min_seconds: float, max_seconds: float = 120.) -> Dict[str, float]:
    """Median seconds per call of each function, run alternately (`alternate_rounds`)."""
    rounds = alternate_rounds(fns, repeats, min_seconds, max_seconds)
    return {name: statistics.median(t) for name, t in rounds.items()}


def spread(values: Sequence[float]) -> Dict[str, float]:
    """Median, minimum and maximum of per-round values."""
    return {'median': float(statistics.median(values)), 'min': float(min(values)),
            'max': float(max(values)), 'rounds': len(values)}


def matmul_fn(n: int, dtype=tf.float32) -> Callable[[], object]:
    """One `n x n` matmul in `dtype` (2 n^3 FLOPs a call): the machine's practical peak."""
    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    return lambda: matmul().numpy()


def matmul_peak_gflops(n: int, repeats: int, dtype=tf.float32) -> float:
    """Matmul GFLOP/s in `dtype` (best of `repeats`), measured on its own."""
    fn = matmul_fn(n, dtype)
    fn()
    best = float('inf')
    for _ in range(max(repeats, 3)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 2. * n ** 3 / best / 1e9


def fraction_of_peak(rounds: Dict[str, List[float]], task: str, work: float, peak_task: str,
                     peak_work: float) -> Dict[str, float]:
    """`task`'s achieved FLOP rate over `peak_task`'s, round by round (each round's
    peak was measured next to that round's run), as a `spread`."""
    return spread([(work / t) / (peak_work / p)
                   for t, p in zip(rounds[task], rounds[peak_task])])


def glow_forward_flops(config: GlowConfig) -> float:
    """Convolution FLOPs of scoring one image (2 per multiply-add).

    Counts every coupling network (3x3, 1x1, 3x3), every split-prior network
    (one 3x3) and every invertible 1x1 convolution, once each: the cost of one
    pass image -> latent. 3 x 8 x 400 on 32x32x3: 1.33 GFLOP.
    """
    height, width, channels = config.image_shape
    width_factor = 2 if config.coupling == 'affine' else 1
    hidden = config.hidden_channels
    macs = 0.
    for level in range(config.num_levels):
        height, width, channels = height // 2, width // 2, channels * 4
        pixels = height * width
        half = channels // 2
        step = (pixels * 9 * half * hidden + pixels * hidden * hidden
                + pixels * 9 * hidden * width_factor * (channels - half)
                + pixels * channels * channels)
        macs += config.num_steps_per_level * step
        if level + 1 < config.num_levels:
            macs += pixels * 9 * half * width_factor * (channels - half)
            channels = half
    return 2. * macs


def tfp_glow_distribution(config: GlowConfig) -> tfd.Distribution:
    """`tfb.Glow` with our coupling and exit networks, as a distribution on images."""
    width = 2 if config.coupling == 'affine' else 1
    coupling_network = coupling_network_fn(config.hidden_channels)
    exit_network = exit_network_fn()

    # TFP's factories take the input shape (and the output channels of an exit);
    # ours also take the output width and a seed (1: Glorot seeds 1 and 2).
    def coupling_fn(input_shape):
        return coupling_network(input_shape, width * input_shape[-1], 1)

    def exit_fn(input_shape, output_chan):
        return exit_network(input_shape, width * output_chan, 0)

    glow = tfb.Glow(output_shape=config.image_shape, num_glow_blocks=config.num_levels,
                    num_steps_per_block=config.num_steps_per_level,
                    coupling_bijector_fn=coupling_fn, exit_bijector_fn=exit_fn,
                    use_actnorm=True, seed=config.seed)
    latent = glow.inverse_event_shape(config.image_shape)
    return tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0., 1.), latent), glow)


def _num_params(variables) -> int:
    """Trainable parameters, counting only the used triangle of LU factors.

    Our invertible 1x1 convolution keeps its strictly lower and strictly upper
    LU factors in two masked `C x C` variables (TFP packs both into one), so
    only `C (C - 1) / 2` entries of each are parameters.
    """
    total = 0
    for v in variables:
        size = int(np.prod(v.shape))
        if v.name.split('/')[-1].split(':')[0] in ('lower', 'upper') and len(v.shape) == 2:
            size = int(v.shape[0]) * (int(v.shape[0]) - 1) // 2
        total += size
    return total


def _images(batch: int, shape, seed: int = 0) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).integers(0, 256, (batch,) + tuple(shape),
                                                            dtype=np.uint8))


class Runner:
    """A scoring function and a training step of one model at one batch size."""

    def __init__(self, score: Callable, train_step: Callable, params: int):
        self.score, self.train_step, self.params = score, train_step, params


def ours(model, batch: int) -> Runner:
    """The evaluator's traced scoring function and `fit`'s traced training step."""
    images = _images(batch, model.image_shape)
    noise = tf.random.uniform(images.shape, seed=1)
    model.initialize(images.numpy())
    config = train.TrainConfig(batch_size=batch)
    optimizer = tf_keras.optimizers.Adam(1e-4)
    step = train.make_train_step(model, optimizer, config)
    return Runner(lambda: model.score_batch(images)['log_prob'].numpy(),
                  lambda: step(images, noise)[0].numpy(), _num_params(model.trainable_variables))


def tfp_peer(config: GlowConfig, batch: int) -> Runner:
    """TFP's `tfb.Glow` scored and trained like ours (fixed batch: docs/stack.md, note 2)."""
    distribution = tfp_glow_distribution(config)
    images = _images(batch, config.image_shape)
    noise = tf.random.uniform(images.shape, seed=1)
    num_dims = float(np.prod(config.image_shape))
    const = num_dims * np.log(256.)

    @tf.function
    def score():
        return distribution.log_prob(dequantize(images)) - const

    score()  # Builds the networks and runs ActNorm's data-dependent initialisation.
    variables = distribution.trainable_variables
    optimizer = tf_keras.optimizers.Adam(1e-4)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            log_prob = distribution.log_prob(dequantize(images, noise)) - const
            loss = tf.reduce_mean(-log_prob / (num_dims * np.log(2.)))
        grads = tape.gradient(loss, variables)
        grads, _ = tf.clip_by_global_norm(grads, 50.)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    return Runner(lambda: score().numpy(), lambda: step().numpy(), _num_params(variables))


def xla_peers(config: GlowConfig, batch: int) -> Dict[str, Callable]:
    """Scoring and the training step of our Glow, with and without XLA.

    Without XLA the step is `fit`'s (`train.make_train_step`); with XLA it is
    the same step without the `tf.distribute` plumbing, which XLA cannot
    compile through (`make_train_step(..., jit_compile=True)`).
    """
    model = models.FlowModel.from_config(config)
    images = _images(batch, config.image_shape)
    noise = tf.random.uniform(images.shape, seed=1)
    model.initialize(images.numpy())
    train_config = train.TrainConfig(batch_size=batch)
    fns = {}
    for xla in (False, True):
        optimizer = tf_keras.optimizers.Adam(1e-4, jit_compile=xla)
        optimizer.build(model.trainable_variables)
        step = train.make_train_step(model, optimizer, train_config, jit_compile=xla)
        score = tf.function(lambda: model.log_prob_terms(images)['log_prob'], jit_compile=xla)
        suffix = 'xla' if xla else 'plain'
        fns[f'score_{suffix}'] = lambda f=score: f().numpy()
        fns[f'train_{suffix}'] = lambda f=step: f(images, noise).loss.numpy()
    return fns


def compare_xla(plan: Plan, config_names: Sequence[str], log: Callable) -> Dict:
    """Our Glow with and without XLA (`jit_compile=True`), scoring and training."""
    out = {}
    for name in config_names:
        config = GlowConfig.named(name)
        seconds = alternate(xla_peers(config, plan.compare_batch), plan.repeats,
                            plan.min_seconds)
        ips = {k: plan.compare_batch / v for k, v in seconds.items()}
        out[name] = dict({f'{k}_images_per_s': v for k, v in ips.items()},
                         score_xla_speedup=ips['score_xla'] / ips['score_plain'],
                         train_xla_speedup=ips['train_xla'] / ips['train_plain'])
        log(f'glow {name} XLA: score {ips["score_plain"]:.1f} -> {ips["score_xla"]:.1f} '
            f'images/s ({out[name]["score_xla_speedup"]:.2f}x), train {ips["train_plain"]:.1f} '
            f'-> {ips["train_xla"]:.1f} ({out[name]["train_xla_speedup"]:.2f}x)')
    return out


def build_model(family: str, config_name: str, shape=(32, 32, 3)):
    return models.named_model(family, config_name, shape)


def compare_with_tfp(plan: Plan, log: Callable) -> Dict:
    """Our Glow and CV-Glow against `tfb.Glow` at the same architecture; the Glow's
    rounds alternate with a float32 matmul, whose rate in the same round is the
    peak that round's GFLOP/s are divided by."""
    out = {}
    for model, key in (('glow', 'glow'), ('cv_glow', 'cvglow')):
        config = named_config(model, plan.glow_compare)
        mine = ours(models.FlowModel.from_config(config), plan.compare_batch)
        peer = tfp_peer(config, plan.compare_batch)
        tasks = {'ours_score': mine.score, 'tfp_score': peer.score}
        if model == 'glow':  # Training comparison for the affine Glow, and the peak.
            tasks.update(ours_train=mine.train_step, tfp_train=peer.train_step,
                         matmul=matmul_fn(plan.matmul_size))
        rounds = alternate_rounds(tasks, plan.repeats, plan.min_seconds)
        seconds = {k: statistics.median(v) for k, v in rounds.items()}
        ips = {k: plan.compare_batch / v for k, v in seconds.items() if k != 'matmul'}
        result = {'config': config.to_dict(), 'batch_size': plan.compare_batch,
                  'params_ours': mine.params, 'params_tfp': peer.params,
                  **{f'{k}_images_per_s': v for k, v in ips.items()},
                  'score_ratio': ips['ours_score'] / ips['tfp_score']}
        if 'ours_train' in ips:
            result['train_ratio'] = ips['ours_train'] / ips['tfp_train']
            # Per round: GFLOP/s of the run over the matmul's GFLOP/s next to it.
            # Training costs about three forward passes (forward, and the backward
            # pass's gradients with respect to inputs and to weights).
            flops = glow_forward_flops(config) * plan.compare_batch
            matmul_flops = 2. * plan.matmul_size ** 3
            result['matmul_peak_gflops'] = spread([matmul_flops / t / 1e9
                                                   for t in rounds['matmul']])
            result['score_fraction_of_peak'] = fraction_of_peak(
                rounds, 'ours_score', flops, 'matmul', matmul_flops)
            result['train_fraction_of_peak'] = fraction_of_peak(
                rounds, 'ours_train', 3. * flops, 'matmul', matmul_flops)
        out[key] = result
        log(f'{key} {plan.glow_compare} vs tfb.Glow (batch {plan.compare_batch}, params '
            f'{mine.params:,} / {peer.params:,}): score {ips["ours_score"]:.1f} / '
            f'{ips["tfp_score"]:.1f} images/s = {result["score_ratio"]:.2f}x'
            + (f'; train {ips["ours_train"]:.1f} / {ips["tfp_train"]:.1f} = '
               f'{result["train_ratio"]:.2f}x' if 'train_ratio' in result else ''))
    return out


def family_row(plan: Plan, family: str, config_name: str, batch: int) -> Dict:
    """Scoring and training images/s and peak RSS of one family, config and batch size."""
    model = build_model(family, config_name)
    runner = ours(model, batch)
    with PeakRSS() as score_rss:
        score_s = alternate({'score': runner.score}, plan.repeats, plan.min_seconds)['score']
    with PeakRSS() as train_rss:
        train_s = alternate({'train': runner.train_step}, plan.repeats,
                            plan.min_seconds)['train']
    return {'family': family, 'config': config_name, 'batch_size': batch,
            'params': runner.params, 'score_images_per_s': batch / score_s,
            'train_images_per_s': batch / train_s,
            'score_peak_rss_mib': score_rss.peak_mib,
            'train_peak_rss_mib': train_rss.peak_mib,
            'score_rss_increase_mib': score_rss.increase_mib,
            'train_rss_increase_mib': train_rss.increase_mib}


def available_memory_mib() -> float:
    """MemAvailable of /proc/meminfo: what a new process can take without swapping or OOM."""
    with open('/proc/meminfo') as f:
        fields = dict(line.split(':', 1) for line in f)
    return int(fields['MemAvailable'].split()[0]) / 1024.


def isolated_family_row(mode: str, family: str, config_name: str, batch: int,
                        memory_limit_mib: float, interval: float = 0.05) -> Dict:
    """`family_row` in a fresh Python process, killed if its RSS passes `memory_limit_mib`.

    A paper-size PixelCNN++ training step at batch 64 needs more than this
    machine's 24 GiB: in-process, the kernel's OOM killer ended the whole run.
    Here the row is recorded with `exceeded_memory_limit_mib` instead, and each
    row's RSS is that of a process holding only its own model.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'row.json')
        with open(os.path.join(tmp, 'stderr'), 'w+') as stderr:
            child = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), '--' + mode, '--row', family,
                 config_name, str(batch), '--json', path],
                stdout=subprocess.DEVNULL, stderr=stderr,
                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
            peak = 0.
            while child.poll() is None:
                peak = max(peak, _rss_mib(child.pid))
                if peak > memory_limit_mib:
                    child.kill()
                    child.wait()
                    break
                time.sleep(interval)
            if child.returncode == -signal.SIGKILL:  # By us, or by the kernel's OOM killer.
                row = {'family': family, 'config': config_name, 'batch_size': batch,
                       'exceeded_memory_limit_mib': memory_limit_mib}
                if peak <= memory_limit_mib:  # The kernel, between two of our polls.
                    row.update(killed_by_system=True, last_seen_rss_mib=peak)
                return row
            if child.returncode != 0:
                stderr.seek(0)
                raise RuntimeError(f'{family} {config_name} batch {batch} failed '
                                   f'(exit {child.returncode}):\n{stderr.read()[-3000:]}')
        with open(path) as f:
            return json.load(f)


def family_throughput(plan: Plan, log: Callable, rows: List[Dict],
                      after_row: Callable[[], None] = lambda: None,
                      memory_limit_mib: Optional[float] = None) -> None:
    """Appends one `family_row` per family, config and batch size to `rows`,
    calling `after_row()` after each (the full plan takes over an hour).

    With `plan.isolate_rows` every row runs in its own process under a memory
    limit (default: 90% of the memory available when the row starts); a
    family and config whose row passes it skips its larger batch sizes.
    """
    done = {(r['family'], r['config'], r['batch_size']): r for r in rows}
    for config_name in plan.family_configs:
        for family in plan.families:
            for batch in plan.family_batches:
                if (family, config_name, batch) in done:  # Resumed run.
                    if 'exceeded_memory_limit_mib' in done[family, config_name, batch]:
                        break
                    continue
                if not plan.isolate_rows:
                    row = family_row(plan, family, config_name, batch)
                else:
                    row = isolated_family_row(plan.name, family, config_name, batch,
                                              memory_limit_mib or 0.9 * available_memory_mib())
                rows.append(row)
                if 'exceeded_memory_limit_mib' in row:
                    log(f'{family:9s} {config_name:6s} batch {batch:3d}: needs more than '
                        f'{row["exceeded_memory_limit_mib"] / 1024:.1f} GiB (killed)'
                        + ('; larger batches skipped' if batch < max(plan.family_batches)
                           else ''))
                    after_row()
                    break
                log(f'{family:9s} {config_name:6s} batch {batch:3d}: score '
                    f'{row["score_images_per_s"]:8.1f} images/s, train '
                    f'{row["train_images_per_s"]:7.1f} images/s, peak RSS '
                    f'{row["score_peak_rss_mib"]:.0f} / {row["train_peak_rss_mib"]:.0f} MiB')
                after_row()


def image_size_scaling(plan: Plan, log: Callable) -> List[Dict]:
    rows = []
    for size in plan.image_sizes:
        config = GlowConfig.named(plan.scaling_config, (size, size, 3))
        batch = plan.compare_batch
        runner = ours(models.FlowModel.from_config(config), batch)
        seconds = alternate({'score': runner.score, 'train': runner.train_step},
                            plan.repeats, plan.min_seconds)
        row = {'image_size': size, 'config': config.to_dict(), 'batch_size': batch,
               'score_images_per_s': batch / seconds['score'],
               'train_images_per_s': batch / seconds['train'],
               'forward_gflop_per_image': glow_forward_flops(config) / 1e9}
        rows.append(row)
        log(f'glow {plan.scaling_config} {size}x{size}: score {row["score_images_per_s"]:.1f}, '
            f'train {row["train_images_per_s"]:.1f} images/s '
            f'({row["forward_gflop_per_image"]:.3f} GFLOP per image)')
    return rows


def run(mode: str, log: Callable = print,
        checkpoint: Callable[[Dict], None] = lambda result: None,
        memory_limit_mib: Optional[float] = None, resume: Optional[Dict] = None) -> Dict:
    """Measures everything in `PLANS[mode]`.

    `checkpoint(result)` receives the results so far after every section and
    every family row (`result['complete']` is False until the end), so an
    interrupted run keeps what it measured; passing that partial result as
    `resume` measures only what it lacks (each section's peers still run side
    by side within the section).
    """
    plan = PLANS[mode]
    started = time.time()
    if resume is not None:
        if resume.get('mode') != mode or resume.get('complete'):
            raise ValueError(f'cannot resume a {"complete " if resume.get("complete") else ""}'
                             f'{resume.get("mode")} run in {mode} mode')
        result = resume
        result['resumed'] = result.get('resumed', 0) + 1
        log(f'resuming: {", ".join(result["measurements"]) or "nothing"} measured before')
    else:
        result = {'mode': mode, 'compared_config': plan.glow_compare, 'complete': False,
                  'machine': machine.machine(),
                  'measurements': {}}
    measurements = result['measurements']
    seconds_before = result.get('seconds', 0.)

    def save():
        result['seconds'] = seconds_before + time.time() - started
        checkpoint(result)

    if 'tfp_comparison' not in measurements:
        _headline(plan, log, result)
        save()
    if 'precision' not in measurements:
        _precision_headline(plan, log, result)
        save()
    if 'xla' not in measurements:
        measurements['xla'] = compare_xla(plan, plan.xla_configs, log)
        save()
    family_throughput(plan, log, measurements.setdefault('families', []), save,
                      memory_limit_mib)
    if 'image_size_scaling' not in measurements:
        measurements['image_size_scaling'] = image_size_scaling(plan, log)
    result['complete'] = True
    save()
    return result


def _headline(plan: Plan, log: Callable, result: Dict) -> None:
    """Ours against `tfb.Glow`, and the fraction of the matmul peak measured
    alternately with it (median and spread over the rounds)."""
    comparison = compare_with_tfp(plan, log)
    glow = comparison['glow']
    flops = glow_forward_flops(GlowConfig.named(plan.glow_compare))
    peak, fraction = glow['matmul_peak_gflops'], glow['score_fraction_of_peak']
    log(f'float32 matmul peak ({plan.matmul_size}x{plan.matmul_size}), alternating with the '
        f'runs: {peak["median"]:.1f} GFLOP/s (rounds {peak["min"]:.1f}-{peak["max"]:.1f})')
    log(f'glow {plan.glow_compare} scoring: {fraction["median"]:.0%} of the matmul peak '
        f'(rounds {fraction["min"]:.0%}-{fraction["max"]:.0%}; {flops / 1e9:.2f} GFLOP per '
        f'image)')
    result.update({
        'glow_score_vs_tfp': glow['score_ratio'],
        'glow_train_vs_tfp': glow['train_ratio'],
        'cvglow_score_vs_tfp': comparison['cvglow']['score_ratio'],
        # With --smoke these "paper" numbers are of the tiny config.
        'glow_paper_score_fraction_of_peak': fraction['median'],
        'glow_paper_score_images_per_s': glow['ours_score_images_per_s'],
        'glow_paper_train_images_per_s': glow['ours_train_images_per_s'],
        'glow_paper_score_gflops': glow['ours_score_images_per_s'] * flops / 1e9,
        'glow_paper_train_fraction_of_peak': glow['train_fraction_of_peak']['median'],
        'matmul_peak_gflops': peak['median'],
    })
    result['measurements']['tfp_comparison'] = comparison


def same_weights(flows: Dict[str, 'models.FlowModel'], batch: int) -> Dict[str, Runner]:
    """`ours` of each flow (of one architecture), every flow given the first's weights."""
    runners, weights = {}, None
    for name, model in flows.items():
        runners[name] = ours(model, batch)
        if weights is None:
            weights = [v.numpy() for v in model.variables]
        else:
            for v, w in zip(model.variables, weights):
                v.assign(w)
    return runners


def precision_pair(config: GlowConfig, batch: int) -> Dict[str, Runner]:
    """Our Glow in float32 and with bfloat16 coupling networks, the same weights."""
    return same_weights({p: models.FlowModel.from_config(config, precision=p)
                         for p in ('float32', 'bfloat16')}, batch)


def bf16_bpd_difference(log: Callable, limit: Optional[int] = None, model_dir: str = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'saved_models',
        'glow_cifar10')) -> Dict:
    """Per-image |bits/dim| between the precisions of a shipped Glow on the
    embedded CIFAR-10 and SVHN test samples (the first `limit` of each), and
    the AUROC in each."""
    from tfp_ood import data, evaluate, export, metrics
    scores = {}
    for precision in ('float32', 'bfloat16'):
        model = export.restore(model_dir, precision=precision)
        for name in ('cifar10', 'svhn_cropped'):
            images = data.images_array(data.load(name, 'test', source='samples'), limit=limit)
            scores[precision, name] = evaluate.score(model, images, progress=False).scores
    out = {}
    for name in ('cifar10', 'svhn_cropped'):
        diff = np.abs(scores['float32', name]['bits_per_dim']
                      - scores['bfloat16', name]['bits_per_dim'])
        out[name] = {'num_images': int(len(diff)), 'max_abs_bpd_diff': float(diff.max()),
                     'mean_abs_bpd_diff': float(diff.mean())}
    for precision in ('float32', 'bfloat16'):
        out[f'auroc_{precision}'] = metrics.ood_metrics(
            -scores[precision, 'cifar10']['log_prob'],
            -scores[precision, 'svhn_cropped']['log_prob'])['auroc']
    out['max_abs_bpd_diff'] = max(out[n]['max_abs_bpd_diff'] for n in ('cifar10', 'svhn_cropped'))
    log(f'bfloat16 vs float32 on the embedded samples ({os.path.basename(model_dir)}): '
        f'per-image |bits/dim| max {out["max_abs_bpd_diff"]:.4f}, mean '
        f'{out["cifar10"]["mean_abs_bpd_diff"]:.5f} / '
        f'{out["svhn_cropped"]["mean_abs_bpd_diff"]:.5f} (CIFAR-10 / SVHN); AUROC '
        f'{out["auroc_float32"]:.4f} / {out["auroc_bfloat16"]:.4f}')
    return out


def _precision_headline(plan: Plan, log: Callable, result: Dict) -> None:
    """bfloat16 against float32 coupling networks, side by side, each precision's
    matmul peak measured in the same rounds."""
    out = {}
    matmul_flops = 2. * plan.matmul_size ** 3
    peaks = {'float32': [], 'bfloat16': []}
    for name in dict.fromkeys((plan.scaling_config, plan.glow_compare)):
        config = GlowConfig.named(name)
        runners = precision_pair(config, plan.compare_batch)
        tasks = {f'{k}_{p}': getattr(r, 'score' if k == 'score' else 'train_step')
                 for p, r in runners.items() for k in ('score', 'train')}
        tasks.update({f'matmul_{p}': matmul_fn(plan.matmul_size, tf.as_dtype(p))
                      for p in runners})
        rounds = alternate_rounds(tasks, plan.repeats, plan.min_seconds)
        ips = {k: plan.compare_batch / statistics.median(v) for k, v in rounds.items()
               if not k.startswith('matmul')}
        flops = glow_forward_flops(config) * plan.compare_batch
        row = {f'{k}_images_per_s': v for k, v in ips.items()}
        for p in runners:
            peaks[p] += [matmul_flops / t / 1e9 for t in rounds[f'matmul_{p}']]
            row[f'matmul_{p}_gflops'] = spread([matmul_flops / t / 1e9
                                                for t in rounds[f'matmul_{p}']])
        fraction = fraction_of_peak(rounds, 'score_bfloat16', flops, 'matmul_bfloat16',
                                    matmul_flops)
        row.update(score_bf16_vs_fp32=ips['score_bfloat16'] / ips['score_float32'],
                   train_bf16_vs_fp32=ips['train_bfloat16'] / ips['train_float32'],
                   score_bf16_fraction_of_bf16_peak=fraction['median'],
                   score_bf16_fraction_of_bf16_peak_rounds=fraction)
        out[name] = row
        log(f'glow {name} bfloat16 / float32: scoring {ips["score_bfloat16"]:.1f} / '
            f'{ips["score_float32"]:.1f} images/s ({row["score_bf16_vs_fp32"]:.2f}x, '
            f'{fraction["median"]:.0%} of the bfloat16 peak, rounds {fraction["min"]:.0%}-'
            f'{fraction["max"]:.0%}), training {ips["train_bfloat16"]:.1f} / '
            f'{ips["train_float32"]:.1f} ({row["train_bf16_vs_fp32"]:.2f}x)')
    peak = {p: statistics.median(v) for p, v in peaks.items()}
    out['matmul_peak_gflops'] = peak
    log(f'matmul peak ({plan.matmul_size}x{plan.matmul_size}, alternating with the runs): '
        f'float32 {peak["float32"]:.1f}, bfloat16 {peak["bfloat16"]:.1f} GFLOP/s')
    out['accuracy'] = bf16_bpd_difference(log, limit=16 if plan.name == 'smoke' else None)
    compared = out[plan.glow_compare]
    result.update({
        # With --smoke these "paper" numbers are of the tiny config.
        'glow_paper_score_bf16_vs_fp32': compared['score_bf16_vs_fp32'],
        'glow_paper_train_bf16_vs_fp32': compared['train_bf16_vs_fp32'],
        'bf16_max_abs_bpd_diff': out['accuracy']['max_abs_bpd_diff'],
        'bf16_matmul_peak_gflops': peak['bfloat16'],
    })
    result['measurements']['precision'] = out


write_json = machine.write_json  # The benchmarks importing this module call it here.


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--quick', dest='mode', action='store_const', const='quick',
                      help='the headline comparisons and the cpu configs (< 5 minutes here)')
    mode.add_argument('--smoke', dest='mode', action='store_const', const='smoke',
                      help='tiny shapes, one repeat: checks that everything runs')
    mode.add_argument('--full', dest='mode', action='store_const', const='full',
                      help='everything (the default; over an hour here)')
    parser.set_defaults(mode='full')
    parser.add_argument('--json', default=None,
                        help='write the results to this file (rewritten as they come in)')
    parser.add_argument('--memory-limit-gib', type=float, default=None,
                        help='kill a family row whose process passes this RSS (default: 90%% '
                             'of the memory available when the row starts; full mode only)')
    parser.add_argument('--resume', action='store_true',
                        help='if --json holds an interrupted run of this mode, measure only '
                             'what it lacks')
    parser.add_argument('--row', nargs=3, metavar=('FAMILY', 'CONFIG', 'BATCH'),
                        help='measure one family row only (how the full mode runs each row '
                             'in its own process)')
    args = parser.parse_args(argv)
    if args.row:
        family, config_name, batch = args.row
        row = family_row(PLANS[args.mode], family, config_name, int(batch))
        if args.json:
            write_json(args.json, row)
        print(json.dumps(row))
        return row
    limit = args.memory_limit_gib * 1024 if args.memory_limit_gib else None
    previous = None
    if args.resume:
        if not args.json:
            parser.error('--resume needs --json (the interrupted run\'s file)')
        if os.path.exists(args.json):
            with open(args.json) as f:
                previous = json.load(f)
            if previous.get('complete'):
                parser.error(f'{args.json} holds a complete run: nothing to resume')
    result = run(args.mode, checkpoint=(lambda r: write_json(args.json, r)) if args.json
                 else (lambda r: None), memory_limit_mib=limit, resume=previous)
    print(f'done in {result["seconds"]:.0f} s')
    for key in HEADLINE_KEYS:
        print(f'  {key}: {result[key]:.3f}')
    return result


if __name__ == '__main__':
    main()
