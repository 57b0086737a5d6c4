"""Evaluation of an index's embeddings against labels (``medsearch eval``).

:mod:`indexer.eval.dataset` reads the labelled items of a catalog,
:mod:`indexer.eval.retrieval` scores leave-one-out retrieval (precision@k, recall@k,
mean average precision), :mod:`indexer.eval.zero_shot` zero-shot classification with
text prompts, and :mod:`indexer.eval.plots` draws them (the ``plot`` extra).
"""
