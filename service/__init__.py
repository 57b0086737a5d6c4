"""medsearch query service: the HTTP layer (FastAPI) over ``indexer``."""
