"""The package version, in a leaf module: the library's modules read it from here, never from the package
root, whose lazy API exports (lstm_dist/__init__.py) would otherwise close an import circle."""

__version__ = "0.1.0"
