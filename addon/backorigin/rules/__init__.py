"""backorigin.rules."""
