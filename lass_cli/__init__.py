"""lass: Latent Autoregressive Source Separation of drums and bass, from the command line."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lass-cli")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
