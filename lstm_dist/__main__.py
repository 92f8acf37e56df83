"""`python -m lstm_dist ...`: the `lstm-dist` command where its console script is not installed."""

from lstm_dist.cli import main

main()
