"""What `backorigin run` has mitmproxy load (`-s`), from an installed package; addon/script.py is
the same for a checkout. A folder of its own, because mitmproxy puts a script's folder on sys.path."""

from backorigin.addon import BackOrigin

addons = [BackOrigin()]
