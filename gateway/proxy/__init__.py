"""Proxying mechanics: header rules, streamed HTTP bodies and websockets."""
