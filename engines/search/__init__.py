"""Search engine: a tantivy-backed sharded search index (work in progress)."""
