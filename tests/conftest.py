"""Test-wide settings: quiet TensorFlow; absl flags usable under pytest; the slow
tests scheduled first."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

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
