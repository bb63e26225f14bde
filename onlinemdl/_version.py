"""The package version (a leaf module: everything that needs it imports it from here)."""
__version__ = "0.2.0.dev0"
