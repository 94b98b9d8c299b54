"""Talking S3: which object a request names, the answers the proxy makes, the store's clients and endpoints."""
