"""Test-wide settings: quiet TensorFlow; absl flags usable under pytest."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402

# absl's TestCase helpers (create_tempdir) read flags that pytest never parses.
flags.FLAGS.mark_as_parsed()
