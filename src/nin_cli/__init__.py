"""nin: an experiment runner for Network In Network classifiers."""

__version__ = "0.1.0"
