"""Tools apart from the losses: the benchmark, the command line, the demo and their helpers."""
