"""The file mitmproxy loads: mitmdump -s addon/script.py --mode reverse:http://STORE:PORT ..."""

from backorigin.addon import BackOrigin

addons = [BackOrigin()]
