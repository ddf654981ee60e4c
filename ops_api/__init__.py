"""The ops API: an aiohttp app in the sidecar's process serving health and metrics."""
