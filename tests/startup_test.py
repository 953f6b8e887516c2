"""TensorFlow's start-up notices are filtered when TensorFlow is imported after
tfp_ood (which does not import it itself), and nothing else is: a fresh
interpreter, because TensorFlow prints them once."""

import os
import subprocess
import sys

import pytest

from tfp_ood import _startup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, **env):
    environment = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    environment.update(env)
    return subprocess.run([sys.executable, '-c', code], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_notices_are_recognised_and_other_lines_are_not():
    notices = [
        'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR',
        'E0000 00:00:1796146476.145437    3490 cuda_platform.cc:52] failed call to cuInit: '
        'INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)',
        'I0000 00:00:1796146471.702402    3490 cudart_stub.cc:31] Could not find cuda drivers '
        'on your machine, GPU will not be used.',
        'I0000 00:00:1796146471.702057    3490 port.cc:153] oneDNN custom operations are on.',
        'I0000 00:00:1796146471.746587    3490 cpu_feature_guard.cc:227] This TensorFlow binary '
        'is optimized to use available CPU instructions in performance-critical operations.',
        'To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild '
        'TensorFlow with the appropriate compiler flags.',
    ]
    others = [
        'E0000 00:00:1796146476.145437    3490 op_kernel.cc:1830] OP_REQUIRES failed: OOM',
        'W0000 00:00:1.0    1 bfc_allocator.cc:482] Allocator ran out of memory',
        'Traceback (most recent call last):',
        'ImportError: libcudart.so.12: cannot open shared object file',
        'a port.cc:1] line that does not start like a log line',
    ]
    assert all(_startup.is_notice(line + '\n') for line in notices)
    assert not any(_startup.is_notice(line) for line in others)


def test_import_prints_nothing_and_devices_can_still_be_configured():
    result = _python('import tfp_ood, tensorflow as tf\n'
                     'tf.config.set_visible_devices([], "GPU")\n'
                     'print(tf.config.get_visible_devices("CPU")[0].device_type)')
    assert result.returncode == 0, result.stderr
    assert result.stderr == ''
    assert result.stdout.strip() == 'CPU'


def test_lines_other_than_notices_are_written_back():
    code = ('import os\n'
            'from tfp_ood import _startup\n'
            'with _startup._filtered_stderr():\n'
            '    os.write(2, b"I0000 00:00:1.0    1 cudart_stub.cc:31] Could not find cuda\\n")\n'
            '    os.write(2, b"a real problem\\n")\n'
            'os.write(2, b"after\\n")\n')
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stderr == 'a real problem\nafter\n'


@pytest.mark.slow(minutes=0.15)
def test_every_message_with_log_level_zero():
    result = _python('import tfp_ood, tensorflow', TF_CPP_MIN_LOG_LEVEL='0')
    assert 'cudart_stub.cc' in result.stderr or 'cuInit' in result.stderr or (
        'port.cc' in result.stderr)


@pytest.mark.slow(minutes=0.3)
def test_onednn_on_by_default_and_the_users_setting_kept():
    code = ('import os, tfp_ood\n'
            'from tensorflow.python.util import _pywrap_util_port\n'
            'print(os.environ["TF_ENABLE_ONEDNN_OPTS"], _pywrap_util_port.IsMklEnabled())')
    environment = {k: v for k, v in os.environ.items() if k != 'TF_ENABLE_ONEDNN_OPTS'}
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['1', 'True']
    result = _python(code, TF_ENABLE_ONEDNN_OPTS='0')
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['0', 'False']


def test_own_programs_are_told_from_a_library_import():
    for argv in (['/venv/bin/tfp-ood', 'score'], ['python', '-m', 'tfp_ood.cli', 'score'],
                 ['python3', '-X', 'importtime', '-m', 'tfp_ood.experiments.detectors'],
                 ['python', os.path.join(REPO, 'examples', 'cifar_svhn.py'), '--reverse'],
                 ['python', os.path.join(REPO, 'benchmarks', 'run.py')]):
        assert _startup.is_own_program(argv), argv
    for argv in (['python', '-c', 'import tfp_ood'], ['python', '-m', 'pytest', 'tests'],
                 ['python', 'my_script.py', '-m', 'tfp_ood.cli'],
                 ['python', os.path.join(REPO, 'tests', 'startup_test.py')], ['python']):
        assert not _startup.is_own_program(argv), argv


@pytest.mark.slow(minutes=0.2)
def test_own_programs_use_tf_keras_and_a_library_import_leaves_keras_alone():
    environment = {k: v for k, v in os.environ.items() if k != 'TF_USE_LEGACY_KERAS'}
    own = ('import os, sys\n'
           'sys.orig_argv = [sys.executable, "-m", "tfp_ood.cli", "score"]\n'
           'import tfp_ood, tensorflow as tf\n'
           'print(os.environ["TF_USE_LEGACY_KERAS"], tf.keras.__name__.split(".")[0])')
    result = subprocess.run([sys.executable, '-c', own], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['1', 'tf_keras']
    result = _python(own, TF_USE_LEGACY_KERAS='0')  # The user's setting is kept.
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == '0'
    library = 'import os, tfp_ood\nprint(os.environ.get("TF_USE_LEGACY_KERAS"))'
    result = subprocess.run([sys.executable, '-c', library], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ['None'], result.stderr


def test_the_package_and_the_command_line_parser_do_not_import_tensorflow():
    # The parser of every verb, with its choices (models, sizes, detectors, precisions).
    result = _python('import sys, tfp_ood, tfp_ood.cli\n'
                     'tfp_ood.cli._build_parser().parse_args(["fit-detector", "--detector", '
                     '"typicality", "--model-dir", "m", "--dataset", "d", "--output", "o"])\n'
                     'print("tensorflow" in sys.modules)\n'
                     'print(tfp_ood.score.__module__, "tensorflow" in sys.modules)\n'
                     'from tfp_ood import export\n'
                     'print(export.__name__)')
    assert result.returncode == 0, result.stderr
    assert result.stderr == ''
    assert result.stdout.split() == ['False', 'tfp_ood.evaluate', 'True', 'tfp_ood.export']


def test_a_missing_name_of_the_package_is_an_attribute_error():
    import tfp_ood
    with pytest.raises(AttributeError, match="has no attribute 'no_such_module'"):
        tfp_ood.no_such_module  # noqa: B018
