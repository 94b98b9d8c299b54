"""backorigin.s3."""
