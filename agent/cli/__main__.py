"""`python -m agent.cli`: what `sidemeter` runs (the `run` command re-execs itself this way)."""

from agent.cli import main

main()
