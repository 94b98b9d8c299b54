"""An addon that does nothing: the hit scenario's control for what mitmproxy itself charges a
request for running any `-s` script (its script loader's addon chain), before the addon does
anything."""


class Nothing:
    pass


addons = [Nothing()]
