"""backorigin: OSS-style mirror and redirect back-to-origin for S3-compatible stores, as a mitmproxy addon."""
