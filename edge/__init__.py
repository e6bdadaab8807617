"""The box's daemon: cameras, integrity, inference, outbox, telemetry, updater, status page.

Never imports torch: the edge extra does not install it.
"""
