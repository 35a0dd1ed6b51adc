"""`python -m stargon` runs the CLI."""

from stargon.cli import app

app(prog_name="stargon")
