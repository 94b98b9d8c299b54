"""backorigin.tools."""
