"""Data stages: adapters for each source, the synthetic shop, ingestion (with pseudonyms), preprocessing (in
memory or streaming) and the event store of incremental updates."""
