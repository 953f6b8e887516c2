"""tfp_ood.outputs: outputs checked before any work, staged, published whole, locked."""

import errno
import json
import os
from unittest import mock

import tensorflow as tf

from tfp_ood import outputs


class StagedFolderTest(tf.test.TestCase):

    def test_published_whole_at_the_end_and_nothing_left_when_interrupted(self):
        root = self.create_tempdir().full_path
        out = os.path.join(root, 'out')
        with outputs.staged_folder(out, ('a.txt', 'b.txt')) as staging:
            self.assertFalse(os.path.exists(out))  # Nothing visible while it runs.
            self.assertTrue(os.path.exists(out + '.lock'))
            for name in ('a.txt', 'b.txt'):
                with open(os.path.join(staging, name), 'w') as f:
                    f.write(name)
        self.assertEqual(sorted(os.listdir(out)), ['a.txt', 'b.txt'])
        self.assertEqual(os.listdir(root), ['out'])  # No staging folder, no lock.
        # Interrupted (Ctrl-C, or SIGTERM as the CLI turns it into Ctrl-C) while replacing.
        with self.assertRaises(KeyboardInterrupt):
            with outputs.staged_folder(out, ('a.txt', 'b.txt'), overwrite=True) as staging:
                with open(os.path.join(staging, 'a.txt'), 'w') as f:
                    f.write('half')
                raise KeyboardInterrupt
        self.assertEqual(os.listdir(root), ['out'])
        with open(os.path.join(out, 'a.txt')) as f:
            self.assertEqual(f.read(), 'a.txt')  # The earlier outputs untouched.

    def test_a_second_run_on_the_same_output_is_refused_not_merged(self):
        root = self.create_tempdir().full_path
        out = os.path.join(root, 'out')
        with outputs.staged_folder(out, ('a.txt',)) as staging:
            with open(os.path.join(staging, 'a.txt'), 'w') as f:
                f.write('first')
            # Another command on the same output while this one runs: refused at once.
            with self.assertRaisesRegex(outputs.OutputLockedError,
                                        'is being written by process'):
                with outputs.staged_folder(out, ('a.txt',)):
                    pass
        # After it, without --overwrite: refused before any work.
        with self.assertRaisesRegex(outputs.OutputError, 'already exist'):
            with outputs.staged_folder(out, ('a.txt',)):
                pass
        with open(os.path.join(out, 'a.txt')) as f:
            self.assertEqual(f.read(), 'first')
        # A stale lock (its process gone) is taken over.
        with open(out + '.lock', 'w') as f:
            json.dump({'pid': 2 ** 22 + 12345, 'host': os.uname().nodename}, f)
        with outputs.staged_folder(out, ('a.txt',), overwrite=True) as staging:
            with open(os.path.join(staging, 'a.txt'), 'w') as f:
                f.write('second')
        with open(os.path.join(out, 'a.txt')) as f:
            self.assertEqual(f.read(), 'second')

    def test_outputs_checked_before_any_work(self):
        root = self.create_tempdir().full_path
        a_file = os.path.join(root, 'file')
        with open(a_file, 'w') as f:
            f.write('x')
        model = os.path.join(root, 'models', 'glow')
        os.makedirs(model)
        cases = [
            ((a_file, True), 'is a file, not a folder'),
            ((os.path.join(a_file, 'out'), True), 'which is a file'),
            ((model, True), 'which this command reads'),
            ((os.path.join(model, 'sub'), True), 'which this command reads'),
            ((os.path.join(root, 'models'), True), 'which this command reads'),
            ((model, False), 'which this command reads'),
            ((os.path.join(root, 'models'), False), 'is a folder, not a file'),
            ((os.path.join(model, 'fit.json'), False), 'which this command reads'),
        ]
        for (path, folder), message in cases:
            with self.subTest(path=path):
                with self.assertRaisesRegex(outputs.OutputError, message):
                    outputs.check_output(path, folder, ('x',), overwrite=True, inputs=[model])
        read_only = os.path.join(root, 'read_only')
        os.makedirs(read_only)
        os.chmod(read_only, 0o500)
        try:
            if not os.access(read_only, os.W_OK):  # Root writes anywhere: nothing to test.
                with self.assertRaisesRegex(outputs.OutputError, 'not writable'):
                    outputs.check_output(os.path.join(read_only, 'out'), True)
        finally:
            os.chmod(read_only, 0o700)

    def test_an_unwritable_place_is_refused_before_any_work(self):
        # A read-only mount (EROFS: access() reports it even to root), simulated.
        root = self.create_tempdir().full_path
        with mock.patch.object(outputs.os, 'access', return_value=False):
            with self.assertRaisesRegex(outputs.OutputError, 'is not writable'):
                outputs.check_output(os.path.join(root, 'out'), True, ('a',))

    def test_a_full_disk_while_writing_leaves_nothing_behind(self):
        root = self.create_tempdir().full_path
        out = os.path.join(root, 'out')
        with self.assertRaises(OSError):
            with outputs.staged_folder(out, ('a.txt', 'b.txt')) as staging:
                with open(os.path.join(staging, 'a.txt'), 'w') as f:
                    f.write('half of it')
                raise OSError(errno.ENOSPC, 'No space left on device')
        self.assertEqual(os.listdir(root), [])  # No output, no staging folder, no lock.

    def test_abandon_removes_what_a_signal_would_leave(self):
        # What the command line's signal handler calls before ending the process.
        root = self.create_tempdir().full_path
        out = os.path.join(root, 'out')
        with outputs.staged_folder(out, ('a.txt',)) as staging:
            with open(os.path.join(staging, 'a.txt'), 'w') as f:
                f.write('x')
            outputs.abandon()
            self.assertEqual(os.listdir(root), [])
            os.makedirs(staging)  # For the block's own exit, as if the process went on.
        self.assertFalse(outputs.publishing())


def test_a_signal_waits_until_a_lock_or_staging_folder_is_registered(tmp_path):
    import signal as signal_module
    seen = []

    def handler(signum, frame):  # As the command line's handler starts.
        del frame
        if outputs.deferring(signum):
            return
        seen.append((signum, sorted(outputs._LOCKS)))

    previous = signal_module.signal(signal_module.SIGTERM, handler)
    try:
        lock = str(tmp_path / 'out.lock')
        with outputs._signals_deferred():
            os.kill(os.getpid(), signal_module.SIGTERM)
            outputs._LOCKS.add(lock)  # What hold_lock registers inside the block.
            assert seen == []  # Held back: not yet delivered.
        assert seen == [(signal_module.SIGTERM, [lock])]
    finally:
        outputs._LOCKS.discard(lock)
        signal_module.signal(signal_module.SIGTERM, previous)


def test_sigterm_while_tensorflow_is_imported_is_one_line(tmp_path):
    import signal as signal_module
    import subprocess
    import sys
    import time
    process = subprocess.Popen(
        [sys.executable, '-m', 'tfp_ood.cli', 'score', '--model-dir', str(tmp_path),
         '--npz', str(tmp_path / 'x.npz'), '--output', str(tmp_path / 'out')],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)  # Importing TensorFlow (seconds), stderr filtered; or just after.
    process.send_signal(signal_module.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        f'tfp-ood score: interrupted; nothing was written to {tmp_path / "out"}')
