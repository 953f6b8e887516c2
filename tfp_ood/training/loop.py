"""The training loop: a step per batch, the hooks after each, a signal turned into a stop at a step.
"""

import contextlib
import signal
import threading
from typing import Callable, Optional, Sequence

import tensorflow as tf

from tfp_ood.training.config import TrainConfig
from tfp_ood.training.errors import TrainingDivergedError
from tfp_ood.training.hooks import Hook, LoopState
from tfp_ood.training.step import StepOutputs

__all__ = ['StopRequest', 'run_loop']


class StopRequest:
    """SIGINT and SIGTERM, turned into a request to checkpoint and stop."""

    def __init__(self):
        self.signal_name: Optional[str] = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            del frame
            self.signal_name = signal.Signals(signum).name

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def run_loop(train_step: Callable, batches, state: LoopState, hooks: Sequence[Hook],
             config: TrainConfig, skipped: tf.Variable, step_variable: tf.Variable,
             stop: Optional[StopRequest] = None) -> LoopState:
    """The training loop: a step per batch, then every hook's `after_step`.

    Stops when the batches end, when `stop` is requested (after the hooks of
    that step), or with `TrainingDivergedError` after
    `config.max_consecutive_nonfinite` skipped steps in a row. Every hook's
    `end` runs however the loop ends.
    """
    consecutive = 0
    for hook in hooks:
        hook.begin(state)
    try:
        for images, noise in batches:
            outputs = StepOutputs(*(o.numpy() for o in train_step(images, noise)))
            state.step += 1
            state.outputs = outputs
            step_variable.assign(state.step)
            if outputs.applied:
                consecutive = 0
            else:
                consecutive += 1
                skipped.assign_add(1)
                if consecutive >= config.max_consecutive_nonfinite:
                    raise TrainingDivergedError(
                        f'{consecutive} consecutive steps with a non-finite loss or gradient '
                        f'(last loss {float(outputs.loss)}, gradient norm '
                        f'{float(outputs.grad_norm)}) at step {state.step}; stopping. The last '
                        f'good checkpoint is kept. Try a lower learning_rate or clip_norm.')
            for hook in hooks:
                hook.after_step(state)
            if stop is not None and stop.requested:
                state.stop_reason = f'stopped by {stop.signal_name}'
                break
    except BaseException as e:
        state.stop_reason = f'error: {type(e).__name__}: {e}'[:300]
        raise
    finally:
        for hook in hooks:
            hook.end(state)
    return state
