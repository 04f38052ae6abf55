"""`python -m llmtuner`: the same as the `llmtuner` command."""

from llmtuner.cli import main

main()
