"""``python -m stilts_tui.cli``: the command line without the console script."""

from stilts_tui.cli import main

main()
