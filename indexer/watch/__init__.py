"""``medsearch index watch``: follow a PACS and keep the index in step with it.

:mod:`indexer.watch.feed` (what a poll found), :mod:`indexer.watch.orthanc` (Orthanc's
change feed), :mod:`indexer.watch.qido` (any DICOMweb server, by study date),
:mod:`indexer.watch.reconcile` (deletions), :mod:`indexer.watch.loop` (the loop).
"""
