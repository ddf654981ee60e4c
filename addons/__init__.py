"""mitmproxy addons: what happens to a flow on its way through the sidecar.

Each module also works alone: `mitmdump --mode reverse:URL -s addons/meter.py -s addons/record.py`.
"""
