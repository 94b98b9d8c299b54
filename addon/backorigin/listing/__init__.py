"""backorigin.listing."""
