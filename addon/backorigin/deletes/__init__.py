"""backorigin.deletes."""
