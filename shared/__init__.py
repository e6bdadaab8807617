"""Code both sides of parkwatch import: wire protocol, config primitives, model-package format.

Kept light on purpose (no torch, no cv2) so the edge box and the cloud host can both load it.
"""

__version__ = "0.1.0"
