"""aifixer: keeps Kubernetes applications healthy while their people sleep."""

__version__ = "0.1.0"
