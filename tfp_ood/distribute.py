"""tf.distribute strategies for scoring and training, created at the right time.

`MultiWorkerMirroredStrategy` configures TensorFlow's collective ops, which
can only happen before the first TensorFlow op of the process runs (loading
a SavedModel, building a model, even `tf.constant`): created later it raises
`RuntimeError: Collective ops must be configured at program startup`. So a
program that scores or trains across workers creates its strategy first:

```python
import tfp_ood
from tfp_ood import distribute

strategy = distribute.create_strategy('multi_worker')  # Before anything else of TensorFlow.
model = tfp_ood.export.load('saved_models/glow_cifar10')
result = tfp_ood.score(model, images, strategy=strategy)
```

Under a multi-worker strategy every worker runs the same program on the same
data; the per-image results reach every worker, and only the chief
(`is_chief`) writes files. `tfp_ood.train.fit` follows TensorFlow's
multi-worker pattern: every worker saves its checkpoints (saving may run
collective ops), the chief into the run directory and the others into a
temporary folder of their own that is removed at the end.
"""

import json
import os
import re
import socket
import time
from typing import Optional

import tensorflow as tf

from tfp_ood.config import STRATEGIES
from tfp_ood.errors import InputError

__all__ = ['HEARTBEAT_TIMEOUT_S', 'STRATEGIES', 'StrategyError', 'abort', 'barrier', 'check_same',
           'create_strategy', 'heartbeat_timeout_s', 'is_chief', 'leave', 'peer_failure', 'task']


class StrategyError(InputError):
    """A strategy that cannot be created as asked: too late in the process, or a
    `TF_CONFIG` that does not describe a cluster."""


def task() -> Optional[dict]:
    """This process's place in the cluster of `TF_CONFIG` (`{'type', 'index'}`, the
    number of workers as `num_workers`), or `None` without one.

    Raises:
      StrategyError: `TF_CONFIG` is not JSON naming a cluster and this task.
    """
    text = os.environ.get('TF_CONFIG')
    if not text:
        return None
    try:
        config = json.loads(text)
        cluster, this = config['cluster'], config['task']
        kind, index = this['type'], int(this['index'])
        workers = len(cluster.get('worker', [])) + len(cluster.get('chief', []))
        if kind not in cluster or not 0 <= index < len(cluster[kind]):
            raise KeyError(f'task {kind}:{index} is not in the cluster')
    except (ValueError, KeyError, TypeError) as e:
        raise StrategyError(f'TF_CONFIG is not a cluster description ({e}); expected e.g. '
                            f'{{"cluster": {{"worker": ["host1:12345", "host2:12345"]}}, '
                            f'"task": {{"type": "worker", "index": 0}}}}') from None
    return {'type': kind, 'index': index, 'num_workers': workers}


def create_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy called `name` (one of `STRATEGIES`).

    `'default'` is TensorFlow's current strategy (one device); `'mirrored'`
    every local GPU (`tf.distribute.MirroredStrategy`); `'multi_worker'` the
    cluster of `TF_CONFIG` (`tf.distribute.MultiWorkerMirroredStrategy`),
    which must be created before the process runs any TensorFlow op.

    Raises:
      StrategyError: an unknown name; `'multi_worker'` without a `TF_CONFIG`,
        with one that names no cluster, or asked for after TensorFlow ran its
        first op (the message says what to move).
    """
    if name not in STRATEGIES:
        raise StrategyError(f'unknown strategy {name!r}; expected one of {STRATEGIES}')
    if name == 'default':
        return tf.distribute.get_strategy()
    if name == 'mirrored':
        return tf.distribute.MirroredStrategy()
    if task() is None:
        raise StrategyError('the multi_worker strategy needs TF_CONFIG, naming the cluster '
                            'and this process\'s index in it (set it in the environment of '
                            'every worker)')
    try:
        _configure_coordination()
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        if 'program startup' not in str(e):
            raise
        raise StrategyError(
            'the multi_worker strategy was created after TensorFlow had already run an op '
            '(loaded or built a model, made a tensor): create it first, at the start of the '
            'program, e.g. strategy = tfp_ood.distribute.create_strategy("multi_worker") '
            'right after the imports') from None


# How long TensorFlow's coordination service (hosted by the chief) waits for a
# worker's heartbeat before it declares the worker crashed, unless the
# environment sets TFP_OOD_HEARTBEAT_TIMEOUT_S. TensorFlow's default, 10 s, is
# shorter than a loaded machine can take between a worker's exit and the
# chief's (`leave`): finished runs ended with a false "tasks have crashed"
# error. A killed worker stops the others after this long.
HEARTBEAT_TIMEOUT_S = 30


def heartbeat_timeout_s() -> float:
    """`TFP_OOD_HEARTBEAT_TIMEOUT_S` if the environment sets it, else
    `HEARTBEAT_TIMEOUT_S`.

    Raises:
      StrategyError: the variable is not a positive number of seconds.
    """
    text = os.environ.get('TFP_OOD_HEARTBEAT_TIMEOUT_S', '').strip()
    if not text:
        return float(HEARTBEAT_TIMEOUT_S)
    try:
        value = float(text)
    except ValueError:
        value = float('nan')
    if not 0 < value < float('inf'):
        raise StrategyError(f'TFP_OOD_HEARTBEAT_TIMEOUT_S={text!r} is not a positive number '
                            f'of seconds')
    return value


def _configure_coordination() -> None:
    """Configures the coordination service `MultiWorkerMirroredStrategy` would
    (the cluster of `TF_CONFIG`, led by its chief or worker 0), with the
    heartbeat timeout of `heartbeat_timeout_s()`; the strategy then keeps it."""
    # No public API sets the heartbeat timeout; the proto is taken from where
    # the strategy's own module imports it (its location moves between releases).
    from tensorflow.python.distribute import collective_all_reduce_strategy, multi_worker_util
    from tensorflow.python.eager import context
    coordination_config_pb2 = collective_all_reduce_strategy.coordination_config_pb2

    timeout_ms = int(round(heartbeat_timeout_s() * 1000))
    if context.context().coordination_service is not None:
        return
    spec = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in ('chief', 'worker') if job in spec.jobs]
    context.context().configure_coordination_service(
        service_type='standalone', service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=timeout_ms)


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """Whether this process writes the outputs: always on one machine; under a
    multi-worker strategy only its chief (worker 0, or the `chief` task)."""
    strategy = strategy or tf.distribute.get_strategy()
    return bool(strategy.extended.should_checkpoint)


def _gather(strategy: tf.distribute.Strategy, value: int) -> list:
    """`value` of every replica, on every worker (a collective)."""
    @tf.function  # Eagerly, a multi-worker strategy warns of its overhead.
    def gather():
        per_replica = strategy.run(lambda: tf.constant([value], tf.int64))
        return strategy.gather(per_replica, axis=0)

    return gather().numpy().tolist()


def check_same(strategy: Optional[tf.distribute.Strategy], value: int, what: str) -> None:
    """Checks that every worker of `strategy` holds the same integer `value`.

    Raises:
      StrategyError: they differ (on every worker, so that none is left
        waiting for the others), naming `what` it is.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    values = _gather(strategy, value)
    if len(set(values)) > 1:
        raise StrategyError(f'the workers disagree on {what} ({values}, by replica); '
                            f'they must share one run directory (a folder every machine sees '
                            f'at the same path)')


def barrier(strategy: Optional[tf.distribute.Strategy] = None) -> None:
    """Waits until every worker of `strategy` has reached this call (a collective
    sum of one number); nothing to wait for on one machine.

    A worker that is done waits here for the chief to finish writing, so the
    workers leave together: one that exits early stops sending heartbeats,
    which the chief's coordination service reports as an error.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    _gather(strategy, 0)


# What a worker's collective operations raise when another worker has stopped
# or cannot be reached.
_PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                  tf.errors.DeadlineExceededError)


def peer_failure(strategy: Optional[tf.distribute.Strategy], error: BaseException
                 ) -> Optional[str]:
    """What `error` says, in one line, if it is a multi-worker strategy's collective
    operation failing because another worker stopped (else `None`: not that)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    if not isinstance(error, _PEER_FAILURES):
        return None
    lines = [line.strip() for line in str(getattr(error, 'message', error)).splitlines()
             if line.strip()]
    telling = [line for line in lines
               if re.search(r'aborted|connect|unavailable|heartbeat|peer|stopped', line, re.I)]
    return (telling or lines or [type(error).__name__])[0]


def abort(strategy: Optional[tf.distribute.Strategy], message: str) -> None:
    """Tells the other workers of a multi-worker strategy that this one stops
    with `message`, so that their collective operations fail at once instead
    of after the heartbeat timeout. Nothing to do on one machine."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    from tensorflow.python.eager import context  # No public API reports to the cluster.
    try:
        context.context().report_error_to_cluster(tf.errors.ABORTED, message)
    except Exception:  # noqa: BLE001 - the cluster may be gone already.
        pass


def _closed(address: str) -> bool:
    """Whether nothing listens at `host:port` any more (its process has ended)."""
    host, port = address.rsplit(':', 1)
    try:
        with socket.create_connection((host.strip('[]'), int(port)), timeout=0.5):
            return False
    except OSError:
        return True


def leave(strategy: Optional[tf.distribute.Strategy] = None, timeout: float = 20.0) -> None:
    """Ends a multi-worker program cleanly: call it last, on every worker.

    Every worker waits for the others (`barrier`); then the chief, which hosts
    TensorFlow's coordination service, waits (at most `timeout` seconds) until
    the other workers' processes have ended, so that it leaves last. A worker
    that outlives the coordination service by a few seconds, or ends more than
    the heartbeat timeout (`heartbeat_timeout_s`) before it, makes TensorFlow log
    `BaseCollectiveExecutor::StartAbort UNAVAILABLE ... heartbeat` errors
    although every result is complete. Nothing to do on one machine.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    barrier(strategy)
    if not is_chief(strategy):
        return
    resolver = strategy.cluster_resolver
    me = (resolver.task_type, resolver.task_id)
    others = [address for kind, addresses in resolver.cluster_spec().as_dict().items()
              for index, address in enumerate(addresses) if (kind, index) != me]
    deadline = time.monotonic() + timeout
    while others and time.monotonic() < deadline:
        others = [address for address in others if not _closed(address)]
        if others:
            time.sleep(0.1)
