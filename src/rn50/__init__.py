"""rn50: train ResNet-50 from scratch on ImageNet-1k, and serve it."""

__version__ = "0.1.0"
