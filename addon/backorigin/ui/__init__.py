"""backorigin.ui."""
