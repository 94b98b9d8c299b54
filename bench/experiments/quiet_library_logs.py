"""Experiment, not part of the addon: load after the addon to measure what quieting library
debug logging is worth (python -m bench --with-script bench/experiments/quiet_library_logs.py).

mitmproxy sets the root logger to DEBUG, and its LegacyLogEvents handler turns every record,
from any thread, into a synchronous `add_log` event dispatched to every addon on the event
loop. botocore logs ~38 DEBUG records per API call and httpcore ~10 per request, so each
write-back and origin fetch costs the event loop dozens of such dispatches. The addon already
does this for "httpx"; this does it for the other libraries it drives.
"""

import logging

for name in ("botocore", "boto3", "s3transfer", "urllib3", "httpcore"):
    logging.getLogger(name).setLevel(logging.WARNING)
