"""Transfer learning on EfficientNet-Lite0 with a hyperparameter search."""
