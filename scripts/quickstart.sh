#!/usr/bin/env bash
# Install the runtime and run the main job on the bundled test model (random weights!):
# embed a real CT slice from pydicom's test files and a text prompt, print the result.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
mkdir -p out
python - <<'PY'
import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file

ds = dcmread(get_testdata_file("CT_small.dcm"))
hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
lo, hi = 40 - 400 / 2, 40 + 400 / 2  # soft-tissue window
Image.fromarray(np.uint8(np.clip((hu - lo) / (hi - lo), 0, 1) * 255)).save("out/CT_small.png")
PY
medsearch model info tests/data/test_model
medsearch embed --model tests/data/test_model --image out/CT_small.png \
  --text "CT abdomen axial soft tissue window" > out/embeddings.json
python -c "
import json; r = json.load(open('out/embeddings.json'))
i, t = r['image_features'][0], r['text_features'][0]
print(f'image embedding: {len(i)} dims, text embedding: {len(t)} dims, '
      f'cosine {sum(a * b for a, b in zip(i, t)):.4f}, scaling_factor {r[\"scaling_factor\"]:.3f}')
print('full JSON: out/embeddings.json')"
