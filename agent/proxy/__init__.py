"""The sidecar's embedded mitmproxy: hook dispatch (`dispatch`) and every touch of a private
mitmproxy name (`internals`), so a mitmproxy upgrade is checked in one place."""
