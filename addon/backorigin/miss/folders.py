"""Folders are not objects. A web server (nginx, Apache, S3's website endpoint...) answers a
folder asked without its trailing slash with a redirect to the same URL plus '/'; the key is a
folder at the origin, so there is no object to mirror: the miss is answered as the origin's 404
(the store's NoSuchKey), with this reason in the log and the flow's decision. Tools that probe a
"directory" key before they list it (pyarrow's dataset discovery, s3fs `info`/`exists`) then get
what the store itself answers, and go on to list."""

from __future__ import annotations

from urllib.parse import urlsplit


def folder_redirect(url: str, status: int, target: str) -> str:
    """Why the redirect of `url` to `target` (absolute) says the key is a folder, or "" when it does
    not: the same path plus '/', the same query (on any host: the path says it)."""
    asked, to = urlsplit(url), urlsplit(target)
    if not asked.path or asked.path.endswith("/") or to.path != asked.path + "/" or to.query != asked.query:
        return ""
    return f"the origin says the key is a folder ({status} to {asked.path}/), not an object: answered as its 404"
