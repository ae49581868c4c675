"""The ``lass`` command: parses options and calls the Python API, nothing else."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lass")
def main() -> None:
    """Separate drums and bass from music with Latent Autoregressive Source Separation."""


if __name__ == "__main__":
    main()
