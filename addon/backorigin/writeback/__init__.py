"""Write-backs: the spool, the create-only upload, the worker process and its supervisor."""
