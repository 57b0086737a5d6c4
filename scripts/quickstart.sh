#!/usr/bin/env bash
# Install the runtime and run the main job on the bundled test model (random weights!):
# index the real DICOM files that ship with pydicom, then search them by text and by image.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
MODEL=tests/data/test_model
INDEX=out/index
SAMPLE=$(python -c "import pathlib, pydicom.data; print(pathlib.Path(pydicom.data.__file__).parent / 'test_files')")
mkdir -p out
medsearch model info "$MODEL"
echo "== index $SAMPLE (pydicom's real scanner files) into $INDEX"
medsearch index build "$SAMPLE" --index "$INDEX" --model "$MODEL" --report out/build-report.json
medsearch index stats --index "$INDEX"
medsearch index verify --index "$INDEX"
echo "== what the model sees for a CT slice: out/CT_small.png"
medsearch preview "$SAMPLE/CT_small.dcm" -o out/CT_small.png
echo "== image search: CT_small.dcm (itself first, score 1.0)"
medsearch index search --index "$INDEX" --model "$MODEL" --image "$SAMPLE/CT_small.dcm" -k 3
echo "== text search (random weights: the ranking means nothing medically)"
medsearch index search --index "$INDEX" --model "$MODEL" -k 3 \
  --text "x-ray chest anteroposterior Atelectasis"
