"""The package's experiments, each a program run as a module.

- `python -m tfp_ood.experiments.detectors`: the detectors table, every
  detector on every shipped model and OOD set;
- `python -m tfp_ood.experiments.detector_search`: chooses a density-of-states
  design on validation shifts only;
- `python -m tfp_ood.experiments.analysis`: the paper's analyses (constant
  images, graying, the second-order expansion, ensembles);
- `python -m tfp_ood.experiments.background_search`: the likelihood ratio's
  background model, chosen on validation data.

`common` holds what they and the short scripts of `examples/` share: the
flags, where images come from (`--data-dir`, `--source tfds`, or the samples
embedded in the package) and where models come from (the shipped
SavedModels, `--retrain`, `--untrained`). Each takes `--help`.
"""
