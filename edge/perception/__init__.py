"""The frame pipeline: which regions of a frame to classify, and what the frame then holds.

Pure of I/O and threads: the daemon (``edge/inference.py``) and ``parkwatch edge classify`` call
the same code, so a technician's check of a still is what the box does with a frame.
"""
