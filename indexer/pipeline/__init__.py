"""The bulk indexing pipeline: reader -> decoder -> encoder -> writer, driven by the runner.

Each stage is its own module (the clip-retrieval shape); the runner times each stage per
batch and reports rate, ETA and a summary.
"""
