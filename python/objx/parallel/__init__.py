"""Vocabulary parallelism (SPEC §4): the sharded forms of every loss and their primitives."""
