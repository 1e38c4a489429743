"""Experiments built from the library: the embedded demo (`demo`) and ablations (`ablate`).

They sit above training and evaluation; only the CLI sits above them."""
