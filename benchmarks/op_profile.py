r"""Where the time of scoring and training a Glow goes, from TensorFlow's profiler.

Traces a few calls of our scoring function and training step (and, with
`--peer`, of TFP's `tfb.Glow` at the same architecture) with
`tf.profiler.experimental` at host tracer level 3, reads the XSpace trace it
writes and sums the kernel time of every TensorFlow op by op type. Reports,
per call: wall time, kernel time (summed over the threads, so it can exceed
wall time when ops run in parallel), the number of op executions of each type
(TFP's Glow runs every coupling network twice when scoring: twice the
convolutions), the share of kernel time in each category, and the GFLOP/s the
convolution kernels themselves reach (analytic convolution FLOPs over the
time spent in convolution kernels), against a float32 matmul peak measured in
the same process.

    python benchmarks/op_profile.py --json benchmarks/results/op_profile.json
    python benchmarks/op_profile.py --config tiny --batch 8 --calls 2   # seconds
    python benchmarks/op_profile.py --precision bfloat16 --no-peer \
        --json benchmarks/results/op_profile_bf16.json

With `--precision bfloat16` the coupling networks compute in bfloat16 (the
peak is then the bfloat16 matmul's), and the casts between the two precisions
are their own category: what the bfloat16 path spends outside the
convolutions.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
from typing import Callable, Dict, Optional, Sequence

import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (benchmarks/run.py: the models and peers measured there)

from tfp_ood import models  # noqa: E402
from tfp_ood.config import GlowConfig  # noqa: E402

# An op event is named '<op name>:<op type>'; executor and threadpool events are not.
# Grappler's fused convolution is '_FusedConv2D' where TensorFlow runs without oneDNN
# (its default on CPUs without AVX-512's neural-network features: seen on an AVX2 AMD
# EPYC) and '_MklNativeFusedConv2D' with it: both count as 'FusedConv2D'.
_OP_EVENT = re.compile(r'^[^:\s]+:(?:_MklNative|_Mkl|_)?([A-Za-z0-9]+)$')

CATEGORIES = (
    ('convolution', ('Conv2D', 'FusedConv2D', 'Conv2DBackpropInput', 'Conv2DBackpropFilter',
                     'Conv2DBackpropFilterWithBias', 'DepthwiseConv2dNative')),
    ('matmul', ('MatMul', 'BatchMatMulV2', 'BatchMatMulV3', 'Einsum')),
    ('optimizer and variables', ('ReadVariableOp', 'AssignVariableOp', 'AssignAddVariableOp',
                                 'AssignSubVariableOp', 'ResourceApplyAdam', 'L2Loss')),
    ('casts', ('Cast',)),
    ('reductions', ('Sum', 'Mean', 'Max', 'Min', 'Prod', 'BiasAddGrad')),
    ('layout', ('Reshape', 'Transpose', 'ConcatV2', 'Split', 'SplitV', 'StridedSlice',
                'Pack', 'Unpack', 'Slice', 'DepthToSpace', 'SpaceToDepth', 'Identity',
                'Tile', 'BroadcastTo', 'Fill', 'ZerosLike', 'OnesLike', 'Squeeze',
                'ExpandDims')),
)


def category(op_type: str) -> str:
    for name, types in CATEGORIES:
        if op_type in types:
            return name
    return 'elementwise and other'


def op_times(xspace_path: str) -> Dict[str, Dict[str, float]]:
    """Kernel seconds and executions of each op type in one XSpace trace."""
    space = xplane_pb2.XSpace()
    with open(xspace_path, 'rb') as f:
        space.ParseFromString(f.read())
    seconds, count = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                match = _OP_EVENT.match(plane.event_metadata[event.metadata_id].name)
                if match:
                    seconds[match.group(1)] += event.duration_ps * 1e-12
                    count[match.group(1)] += 1
    return {op: {'seconds': seconds[op], 'count': count[op]} for op in seconds}


def profile(fn: Callable[[], object], calls: int) -> Dict:
    """Wall time and per-op-type kernel time of `calls` calls of a traced function."""
    fn()  # Traces.
    fn()  # Warms up.
    logdir = tempfile.mkdtemp(prefix='tfp_ood_profile_')
    options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=3)
    tf.profiler.experimental.start(logdir, options=options)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    wall = (time.perf_counter() - start) / calls
    tf.profiler.experimental.stop()
    paths = glob.glob(os.path.join(logdir, 'plugins', 'profile', '*', '*.xplane.pb'))
    if not paths:
        raise RuntimeError(f'the profiler wrote no trace under {logdir}')
    ops = {op: {'seconds': v['seconds'] / calls, 'count': v['count'] / calls}
           for op, v in op_times(paths[0]).items()}
    kernel = sum(v['seconds'] for v in ops.values())
    shares = collections.Counter()
    for op, v in ops.items():
        shares[category(op)] += v['seconds'] / kernel
    return {'wall_seconds': wall, 'kernel_seconds': kernel,
            'category_share': dict(shares.most_common()),
            'ops': dict(sorted(ops.items(), key=lambda kv: -kv[1]['seconds']))}


def summarize(name: str, result: Dict, flops: Optional[float], peak: float,
              log: Callable = print, top: int = 8) -> None:
    log(f'\n{name}: {result["wall_seconds"] * 1e3:.1f} ms per call, kernel time '
        f'{result["kernel_seconds"] * 1e3:.1f} ms summed over threads')
    for cat, share in result['category_share'].items():
        log(f'  {cat:26s} {100 * share:5.1f}%')
    conv = result['category_share'].get('convolution', 0.) * result['kernel_seconds']
    convs = sum(v['count'] for op, v in result['ops'].items() if category(op) == 'convolution')
    log(f'  convolution executions per call: {convs:.0f}')
    if flops and conv:
        # Per kernel (kernels running side by side share the cores, which lowers
        # this) and per wall-clock second of the whole call.
        result['conv_kernel_gflops'] = flops / conv / 1e9
        result['conv_kernel_fraction_of_peak'] = result['conv_kernel_gflops'] / peak
        result['wall_gflops'] = flops / result['wall_seconds'] / 1e9
        result['wall_fraction_of_peak'] = result['wall_gflops'] / peak
        log(f'  convolution FLOPs per second of convolution kernel time: '
            f'{result["conv_kernel_gflops"]:.0f} GFLOP/s '
            f'({100 * result["conv_kernel_fraction_of_peak"]:.0f}% of the matmul peak); '
            f'per wall-clock second: {result["wall_gflops"]:.0f} GFLOP/s '
            f'({100 * result["wall_fraction_of_peak"]:.0f}%)')
    log('  top op types: ' + ', '.join(
        f'{op} {100 * v["seconds"] / result["kernel_seconds"]:.1f}% (x{v["count"]:.0f})'
        for op, v in list(result['ops'].items())[:top]))


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default='paper', help='Glow config name (paper, cpu, tiny)')
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--calls', type=int, default=3, help='profiled calls of each function')
    parser.add_argument('--peer', action=argparse.BooleanOptionalAction, default=True,
                        help="also profile TFP's tfb.Glow at the same architecture")
    parser.add_argument('--precision', choices=('float32', 'bfloat16'), default='float32',
                        help="our Glow's coupling networks' precision (TFP's peer is float32)")
    parser.add_argument('--matmul-size', type=int, default=4096)
    parser.add_argument('--json', help='write the results here')
    args = parser.parse_args(argv)

    model = models.named_model('glow', args.config, (32, 32, 3), precision=args.precision)
    config: GlowConfig = model.config
    flops = bench.glow_forward_flops(config) * args.batch
    peak = bench.matmul_peak_gflops(args.matmul_size, 3, tf.as_dtype(args.precision))
    print(f'{args.precision} matmul peak: {peak:.0f} GFLOP/s; Glow {args.config} at batch '
          f'{args.batch}: {flops / 1e9:.2f} GFLOP of convolutions per scoring call')
    runners = {'ours': bench.ours(model, args.batch)}
    if args.peer:
        runners['tfp'] = bench.tfp_peer(config, args.batch)
    out = {'config': args.config, 'batch': args.batch, 'precision': args.precision,
           'matmul_peak_gflops': peak,
           'score_conv_gflop_per_call': flops / 1e9, 'results': {}}
    for name, runner in runners.items():
        for what, fn, call_flops in (('score', runner.score, flops),
                                     ('train', runner.train_step, 3 * flops)):
            # Training: forward, gradient with respect to inputs and to filters, ~3x.
            result = profile(fn, args.calls)
            summarize(f'{name} {what}', result, call_flops, peak)
            out['results'][f'{name}_{what}'] = result
    if args.json:
        bench.write_json(args.json, out)
    return out


if __name__ == '__main__':
    main()
