"""python -m tfp_ood.samples DATA_DIR: regenerate the embedded samples."""

import json
import sys

from tfp_ood.samples import build

if len(sys.argv) != 2:
    sys.exit('usage: python -m tfp_ood.samples DATA_DIR')
print(json.dumps(build(sys.argv[1]), indent=2))
