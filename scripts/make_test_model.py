"""Regenerate the bundled test model (tests/data/test_model) from a seeded random release.

Usage: python scripts/make_test_model.py [--out DIR] [--tokenizer DIR]

The CLIP tokenizer files come from the bundled model itself when it exists, else from
the reference package (``medimageinsights``), which ships them under its MIT licence.
Needs the export extra (torch).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from indexer.model.synthetic import build_test_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "test_model"


def default_tokenizer_dir() -> Path:
    bundled = DEFAULT_OUT / "tokenizer"
    if (bundled / "vocab.json").is_file():
        return bundled
    import MedImageInsights  # the reference implementation, dev extra

    return (
        Path(MedImageInsights.__file__).parent
        / "v20240927"
        / "language_model"
        / "clip_tokenizer_v4162"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--tokenizer", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    tok = args.tokenizer or default_tokenizer_dir()
    # copy first: the output directory is replaced, and may be where the tokenizer lives
    vocab, merges = (tok / "vocab.json").read_bytes(), (tok / "merges.txt").read_bytes()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_bytes(vocab)
        (Path(tmp) / "merges.txt").write_bytes(merges)
        manifest = build_test_model(args.out, Path(tmp) / "vocab.json", Path(tmp) / "merges.txt")
    print(json.dumps({"out": str(args.out), "fingerprint": manifest.fingerprint}))


if __name__ == "__main__":
    main()
