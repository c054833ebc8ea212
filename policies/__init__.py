"""The routing-policy language: load YAML, validate, compile to frozen objects, decide.

Pure: no I/O after load, no aiohttp, never imports `gateway`.
"""
