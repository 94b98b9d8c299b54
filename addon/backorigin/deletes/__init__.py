"""Deletes that stick: tombstones, and the child addon that writes and clears them."""
