"""batchdeck: the command line, configuration and `batchdeck up`."""

from broker import __version__

__all__ = ["__version__"]
