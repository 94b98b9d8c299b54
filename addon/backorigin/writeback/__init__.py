"""backorigin.writeback."""
