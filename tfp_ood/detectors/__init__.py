"""Out-of-distribution detectors built on the package's density models.

Raw likelihood fails as an OOD score (the paper's finding). The detectors here
are the published remedies, each an object with one interface:

```none
detector.fit(in_distribution_images)   # where the detector needs it; returns self
detector.score(images) -> DetectorScores
  .ood_score   [N] (or one per batch of M images): higher = more out-of-distribution
  .components  {name: [N]}: the numbers the score was made from
```

| detector (module) | score | reference |
|---|---|---|
| `RawLikelihood` (`raw`) | bits/dim, `-log p(x) / (D ln 2)` | Nalisnick et al., 2019 |
| `LikelihoodRatio` (`ratio`) | `-(log p_fg(x) - log p_bg(x)) / (D ln 2)` | Ren et al., 2019 |
| `InputComplexity` (`complexity`) | `-log2 p(x) / D - L(x) / D` | Serrà et al., 2020 |
| `Typicality` (`typicality`) | `|mean_m bpd(x_m) - H|`, batches of `M` | Nalisnick et al., 2019 |
| `WAIC` (`waic`) | `-(mean_k log p_k(x) - var_k log p_k(x))` | Choi et al., 2018 |
| `DensityOfStates` (`density_of_states`) | `-log q(s(x))`, statistics `s` | Morningstar, 2021 |

Each score is defined once, in TensorFlow ops (`Detector.graph_score`), run
eagerly by `score` and inside the SavedModel that `FittedDetector.export`
writes. `codecs` holds the lossless codecs (PNG in TensorFlow; JPEG 2000 and
JPEG XL, the only Python-only statistics). `registry` builds a detector by
name, `calibration` sets its threshold on held-out images, `fitted` saves,
loads and exports a fitted one.

Every likelihood goes through the shared evaluator (`tfp_ood.score`), so a
detector works for every model family and for SavedModels loaded with
`tfp_ood.export.load`. Inputs are uint8 images `[N, H, W, C]` (arrays or
datasets, as `tfp_ood.score` takes them). `detector_metrics` turns the scores
of an in-distribution and an out-of-distribution set into AUROC, AUPR and FPR
at 95% TPR.
"""

from tfp_ood.config import DETECTOR_NAMES, SELECTED
from tfp_ood.detectors import codecs
from tfp_ood.detectors.base import Detector, DetectorScores, NotFittedError, detector_metrics
from tfp_ood.detectors.calibration import Calibration, calibrate, minimum_validation_images
from tfp_ood.detectors.codecs import CODECS, Compressor, compressed_bits
from tfp_ood.detectors.complexity import InputComplexity
from tfp_ood.detectors.density_of_states import ESTIMATORS, DensityOfStates
from tfp_ood.detectors.fitted import (FIT_FORMAT, FittedDetector, fit_detector, load_detector,
                                      model_identity)
from tfp_ood.detectors.ratio import LikelihoodRatio
from tfp_ood.detectors.raw import RawLikelihood
from tfp_ood.detectors.registry import (DETECTORS, FLOW_DETECTOR_NAMES, LIKELIHOOD_PATH,
                                        ONE_PASS, check_design, named, read_design)
from tfp_ood.detectors.typicality import Typicality
from tfp_ood.detectors.waic import WAIC

__all__ = [
    'CODECS', 'Calibration', 'Compressor', 'DETECTORS', 'DETECTOR_NAMES', 'DensityOfStates',
    'Detector', 'DetectorScores', 'ESTIMATORS', 'FIT_FORMAT', 'FLOW_DETECTOR_NAMES',
    'FittedDetector', 'InputComplexity', 'LIKELIHOOD_PATH', 'LikelihoodRatio', 'NotFittedError',
    'ONE_PASS', 'RawLikelihood', 'SELECTED', 'Typicality', 'WAIC', 'calibrate', 'check_design',
    'codecs', 'compressed_bits',
    'detector_metrics', 'fit_detector', 'load_detector', 'minimum_validation_images',
    'model_identity', 'named', 'read_design',
]
