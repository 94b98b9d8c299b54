"""backorigin.miss."""
