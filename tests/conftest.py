"""Test-wide settings: quiet TensorFlow; absl flags usable under pytest; the slow
tests scheduled first."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _share_the_cores():
    """Each of N xdist workers gets 1/N of the cores for TensorFlow's kernels.

    TensorFlow sizes its intra-op pool (and oneDNN its OpenMP pool) to every core
    of the machine, so two workers on two cores each run two threads a core. One
    thread per worker was faster (quick tier, two runs each, Intel Xeon with AMX:
    101 / 97 s against 108 / 103 s; docs/performance.md). Child processes
    inherit the setting; a value already in the environment is kept.
    """
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    if workers > 1:
        threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
        for name in ('TF_NUM_INTRAOP_THREADS', 'OMP_NUM_THREADS'):
            os.environ.setdefault(name, threads)


_share_the_cores()

from absl import flags  # noqa: E402

# absl's TestCase helpers (create_tempdir) read flags that pytest never parses.
flags.FLAGS.mark_as_parsed()


def pytest_collection_modifyitems(items):
    """The tests marked `slow` run first, the longest (`slow(minutes=...)`,
    else one minute) at the head.

    With two xdist workers handed one test at a time (`--maxschedchunk 1` in
    setup.cfg) this is longest-first scheduling: neither worker is left with a
    four-minute test while the other has finished.
    """
    def minutes(item):
        marker = item.get_closest_marker('slow')
        return 0 if marker is None else marker.kwargs.get('minutes', 1)

    items.sort(key=minutes, reverse=True)  # Stable: otherwise in collection order.
