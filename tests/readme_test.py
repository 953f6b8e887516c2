"""The README as a stranger reads it: its first command in a fresh clone with no
data folder beside it, its Python snippet, and every checkable claim of it and
of docs/ (paths, shipped models, scripts and their flags)."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from tests import scripts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ['README.md', 'saved_models/README.md'] + sorted(
    os.path.join('docs', name) for name in os.listdir(os.path.join(REPO, 'docs'))
    if name.endswith('.md'))


# Runs command lines (`script.py args...` or `-m module args...`) one after the
# other in one Python process, each as `python <command line>` would run it,
# and prints [exit code, stdout, stderr] of each as JSON: TensorFlow is imported
# once instead of once per command.
_IN_ONE_PROCESS = r"""
import contextlib, io, json, os, runpy, sys, traceback
results = []
for command in json.loads(sys.argv[1]):
    module = command[0] == '-m'
    path = os.path.abspath(command[0])
    sys.argv = [command[1] if module else path, *command[2 if module else 1:]]
    sys.path.insert(0, os.getcwd() if module else os.path.dirname(path))
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if module:
                runpy.run_module(command[1], run_name='__main__', alter_sys=True)
            else:
                runpy.run_path(path, run_name='__main__')
    except SystemExit as e:
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    except BaseException:
        code = 1
        err.write(traceback.format_exc())
    finally:
        sys.path.pop(0)
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def _run_in_one_process(commands, cwd, env):
    """[(exit code, stdout, stderr)] of each command line, all run in one process."""
    run = subprocess.run([sys.executable, '-c', _IN_ONE_PROCESS, json.dumps(commands)],
                         cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return [tuple(r) for r in json.loads(run.stdout.splitlines()[-1])]


def _read(path):
    with open(os.path.join(REPO, path)) as f:
        return f.read()


def _code_blocks(text, languages=('bash',)):
    """The fenced code blocks of a Markdown text in `languages` ('' for a bare fence)."""
    blocks, language, lines = [], None, []
    for line in text.splitlines():
        if line.startswith('```'):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                if language in languages:
                    blocks.append('\n'.join(lines) + '\n')
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def _commands(block):
    """The shell commands of a code block: continuation lines joined, comments dropped."""
    block = re.sub(r'\\\n\s*', ' ', block)
    commands = []
    for line in block.splitlines():
        line = line.split(' #')[0].strip()
        if line and not line.startswith('#'):
            commands.extend(part.strip() for part in re.split(r'&&|\|\|', line))
    return commands


def _env(home):
    """A stranger's environment: an empty HOME, no data directory, no TFDS copies."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('TFP_OOD_DATA_DIR', 'TFDS_DATA_DIR', 'PYTHONPATH')}
    env.update(HOME=home, TF_CPP_MIN_LOG_LEVEL='2')
    return env


def _first_command():
    """The README's first command: `python examples/...` from its first code block."""
    block = _code_blocks(_read('README.md'))[0]
    command = [c for c in _commands(block) if c.startswith('python examples/')]
    assert command, f'no "python examples/..." in the README\'s first code block:\n{block}'
    return shlex.split(command[0])


class StrangerTest(tf.test.TestCase):
    """What a newcomer with only a clone of the repository sees."""

    def setUp(self):
        super().setUp()
        root = self.create_tempdir().full_path
        self.home = os.path.join(root, 'home')
        os.makedirs(self.home)
        self.clone = os.path.join(root, 'repo')  # No '../shared' beside it.
        if os.path.isdir(os.path.join(REPO, '.git')):  # Committed files only, as a clone.
            subprocess.run(['git', 'clone', '--quiet', REPO, self.clone], check=True,
                           env=_env(self.home))
        else:
            shutil.copytree(REPO, self.clone, ignore=shutil.ignore_patterns(
                '.venv', 'results', 'runs', '__pycache__', '*.egg-info'))

    def _run(self, args, **kwargs):
        # The clone's own package, as `pip install -e .` in the clone would give.
        env = dict(_env(self.home), PYTHONPATH=self.clone)
        return subprocess.run(args, cwd=self.clone, env=env, capture_output=True, text=True,
                              timeout=900, **kwargs)

    @pytest.mark.slow(minutes=4)
    def test_first_command_runs_in_a_fresh_clone(self):
        # Exactly the README's first command, no flags added: the embedded 2,000-image
        # samples and the SavedModels shipped in saved_models/.
        command = _first_command()
        self.assertEqual(command[0], 'python')
        run = self._run([sys.executable] + command[1:])
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        self.assertNotIn('Traceback', run.stderr)
        printed = run.stdout
        out = os.path.join(self.clone, 'results', 'cifar_svhn')
        for name in ('overview.png', 'bpd_table.md', 'summary.md', 'summary.json',
                     'metrics.json'):
            self.assertTrue(os.path.exists(os.path.join(out, name)), name)
        self.assertIn(f'Main figure: {os.path.join(out, "overview.png")}', printed)
        self.assertIn('embedded in the package', printed)
        # Files users touch have shell-friendly names.
        for name in os.listdir(os.path.join(out, 'scores')):
            self.assertRegex(name, r'^[A-Za-z0-9_.-]+$')
        with open(os.path.join(out, 'summary.json')) as f:
            summary = json.load(f)
        shipped = sorted(name for name, _ in scripts.load('examples/cifar_svhn.py').CIFAR_MODELS
                         if os.path.isdir(os.path.join(self.clone, 'saved_models', name)))
        self.assertIn('glow_cifar10', shipped)
        self.assertEqual(sorted(summary['metrics']), shipped)  # No family dropped.
        bpd = {(r['model'], r['scored_set']): r for r in summary['rows']}
        for model in shipped:
            # The paper's observation on real images: SVHN more likely than CIFAR-10.
            self.assertLess(bpd[model, 'svhn_cropped/test']['bpd_mean'],
                            bpd[model, 'cifar10/test']['bpd_mean'], model)
            self.assertLess(summary['metrics'][model]['auroc'], 0.5, model)
            self.assertIn(f'| {model} |', printed)
        self.assertEqual(bpd['glow_cifar10', 'cifar10/test']['num_images'], 2000)
        self.assertEqual(bpd['glow_cifar10', 'svhn_cropped/test']['num_images'], 2000)
        self.assertLess(bpd['glow_cifar10', 'constant_128']['bpd_mean'],
                        bpd['glow_cifar10', 'svhn_cropped/test']['bpd_mean'])
        self.assertGreater(bpd['glow_cifar10', 'uniform_noise']['bpd_mean'],
                           bpd['glow_cifar10', 'cifar10/test']['bpd_mean'])
        # The newcomer's summary: both sets per model with the paper's numbers, the
        # AUROC, the images the slow families scored, and the main figure's path.
        self.assertIn('3.553 (3.464)', printed)
        self.assertIn('| pixelcnn_cifar10 | 250 |', printed)
        self.assertIn('pixelcnn_cifar10 scored the first 250 images of each set', printed)
        self.assertIn('--vae-images 0', printed)
        # The shipped detector: about 5% of CIFAR-10 (its threshold's rate), most of SVHN.
        with open(os.path.join(REPO, 'saved_models', 'detector_cifar10.json')) as f:
            shipped_detector = json.load(f)['detector']
        self.assertIn(f'A detector that works: the shipped {shipped_detector}', printed)
        self.assertIn('tfp-ood detect --detector', printed)
        flagged = re.search(r'flags ([0-9.]+)% of cifar10/test .* and ([0-9.]+)% of '
                            r'svhn_cropped/test', printed)
        self.assertIsNotNone(flagged, printed[-3000:])
        self.assertLess(float(flagged.group(1)), 10)
        self.assertGreater(float(flagged.group(2)), 70)  # 88.4% of the sample (README).

    @pytest.mark.slow
    def test_missing_data_is_one_line_naming_the_fix(self):
        script = os.path.join('examples', 'cifar_svhn.py')
        cases = [
            ([script, '--data-dir', 'no_such_dir'], 'does not exist'),
            ([script, '--source', 'tfds', '--models', 'glow_cifar10'], 'not prepared'),
            (['-m', 'tfp_ood.cli', 'score', '--model-dir', 'saved_models/glow_cifar10',
              '--dataset', 'cifar10', '--data-dir', 'no_such_dir', '--output', 'x'],
             'does not exist'),
            (['-m', 'tfp_ood.cli', 'score', '--model-dir', 'saved_models/glow_cifar10',
              '--dataset', 'svhn_cropped', '--source', 'tfds', '--output', 'x'],
             'not prepared'),
        ]
        # All in one process, each as its command line runs it (TensorFlow imported once).
        results = _run_in_one_process([args for args, _ in cases], self.clone,
                                      dict(_env(self.home), PYTHONPATH=self.clone))
        for (args, expected), (code, _, stderr) in zip(cases, results):
            with self.subTest(args=args):
                self.assertEqual(code, 2, stderr[-2000:])
                self.assertNotIn('Traceback', stderr)
                errors = [line for line in stderr.splitlines()
                          if re.match(r'(cifar_svhn\.py|tfp-ood \w+): error: ', line)]
                self.assertLen(errors, 1, stderr[-2000:])
                self.assertIn(expected, errors[0])


class ReadmeSnippetTest(tf.test.TestCase):

    @pytest.mark.slow
    def test_python_snippet_scores_with_a_shipped_model(self):
        snippet = _code_blocks(_read('README.md'), ('python',))[0]
        workdir = self.create_tempdir().full_path
        os.symlink(os.path.join(REPO, 'saved_models'), os.path.join(workdir, 'saved_models'))
        run = subprocess.run([sys.executable, '-c', snippet], cwd=workdir, capture_output=True,
                             text=True, timeout=600, env=_env(workdir))
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        self.assertIn("'auroc'", run.stdout)
        self.assertTrue(os.path.exists(os.path.join(workdir, 'histogram.png')))


class DocsClaimsTest(tf.test.TestCase):
    """Claims of the README and docs/ that can be checked mechanically."""

    def test_linked_and_named_paths_exist(self):
        for doc in DOCS:
            text = _read(doc)
            base = os.path.dirname(os.path.join(REPO, doc))
            prose = re.sub(r'`[^`]*`', '', re.sub(r'^```.*?^```', '', text, flags=re.M | re.S))
            for link in re.findall(r'\]\(([^)#\s]+)\)', prose):
                if not re.match(r'[a-z]+://', link):
                    self.assertTrue(os.path.exists(os.path.join(base, link)),
                                    f'{doc} links to {link}, which does not exist')
            for path in re.findall(r'saved_models/([A-Za-z0-9_.]+)', text):
                name = path.rstrip('.')
                self.assertTrue(os.path.exists(os.path.join(REPO, 'saved_models', name)),
                                f'{doc} names saved_models/{name}, which does not exist')
            self.assertNotIn('../shared', text, doc)
            self.assertNotIn('DESIGN.md', text, doc)

    def test_no_file_points_at_notes_users_do_not_have(self):
        for folder in ('tfp_ood', 'examples', 'benchmarks', 'saved_models', 'docs'):
            for root, _, files in os.walk(os.path.join(REPO, folder)):
                for name in files:
                    if name.endswith(('.py', '.md', '.sh', '.cfg')):
                        with open(os.path.join(root, name)) as f:
                            text = f.read()
                        for pointer in ('DESIGN.md', 'STYLE.md', '../shared'):
                            self.assertNotIn(pointer, text, os.path.join(root, name))

    @pytest.mark.slow(minutes=0.15)
    def test_commands_name_scripts_and_flags_that_exist(self):
        commands = []  # (doc, command, key of its --help, words)
        for doc in DOCS:
            for block in _code_blocks(_read(doc), ('bash', '')):
                for command in _commands(block):
                    if not re.search(r'(^|\s)(python|tfp-ood)\s', command):
                        continue  # Prose in a bare fence, pip, tensorboard, ...
                    words = shlex.split(command.replace('$', ''))
                    for i, word in enumerate(words):  # Skip a leading VAR=value.
                        if '=' not in word:
                            words = words[i:]
                            break
                    if words[:1] == ['tfp-ood'] and len(words) > 1:
                        key = ('-m', 'tfp_ood.cli', words[1])
                    elif words[:1] == ['python'] and len(words) > 1 and (
                            words[1].startswith(('examples/', 'benchmarks/'))):
                        self.assertTrue(os.path.exists(os.path.join(REPO, words[1])),
                                        f'{doc}: {command}')
                        key = (words[1],)
                    elif words[:2] == ['python', '-m'] and len(words) > 2 and (
                            words[2].startswith('tfp_ood.experiments.')):
                        key = ('-m', words[2])
                    else:
                        continue
                    commands.append((doc, command, key, words))
        # Every script's --help from one process (TensorFlow imported once), each
        # run as its command line would run it.
        keys = sorted({c[2] for c in commands})
        results = _run_in_one_process([list(key) + ['--help'] for key in keys], REPO,
                                      dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
        helps = {}
        for key, (code, out, err) in zip(keys, results):
            self.assertEqual(code, 0, f'{key}: {err[-2000:]}')
            self.assertRegex(out, r'^usage: ', key)
            helps[key] = out
        for doc, command, key, words in commands:
            for flag in (w.split('=')[0] for w in words if w.startswith('--')):
                self.assertIn(flag, helps[key], f'{doc}: {command}')
        self.assertIn(('examples/cifar_svhn.py',), helps)
        self.assertIn(('-m', 'tfp_ood.cli', 'train'), helps)
        self.assertIn(('-m', 'tfp_ood.experiments.detectors'), helps)


if __name__ == '__main__':
    tf.test.main()
