#!/usr/bin/env bash
# Install the runtime and run the main job on the bundled test model (random weights!):
# index the real DICOM files that ship with pydicom, search them by image and text from the
# command line, then serve the index over HTTP and query it (text and a DICOM upload).
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
PORT=${MEDSEARCH_QUICKSTART_PORT:-8765}
echo "== serve $INDEX on 127.0.0.1:$PORT and query it over HTTP"
medsearch serve --index "$INDEX" --model "$MODEL" --port "$PORT" > out/serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
python - "$PORT" "$SAMPLE/MR_small.dcm" <<'PY'
import json, sys, time
import httpx
base, dicom = f"http://127.0.0.1:{sys.argv[1]}", sys.argv[2]
for _ in range(120):
    try:
        if httpx.get(f"{base}/readyz").status_code == 200:
            break
    except httpx.TransportError:
        pass
    time.sleep(0.5)
else:
    sys.exit("the service did not become ready: see out/serve.log")
text = httpx.post(f"{base}/v1/search/text", json={"text": "x-ray chest anteroposterior Atelectasis", "k": 3})
print("POST /v1/search/text ->", text.status_code)
for hit in text.json()["results"]:
    print(f"  {hit['score']:.3f}  {hit['metadata']['modality']}  {hit['source_uri']}")
with open(dicom, "rb") as f:
    image = httpx.post(f"{base}/v1/search/image", files={"file": ("MR_small.dcm", f)}, data={"options": json.dumps({"k": 3})})
print("POST /v1/search/image MR_small.dcm ->", image.status_code)
for hit in image.json()["results"]:
    print(f"  {hit['score']:.3f}  {hit['source_uri']}")
PY
echo "== done: serve it yourself with"
echo "   .venv/bin/medsearch serve --index $INDEX --model $MODEL   # then open http://127.0.0.1:8000/"
