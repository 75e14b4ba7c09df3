"""`python -m pipeline` is the `tunepipe` command."""
from pipeline.cli import main

main(prog_name="tunepipe")
