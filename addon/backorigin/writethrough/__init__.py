"""Write-through: every write the store accepted through the proxy is applied to the bucket's S3 origin too."""
