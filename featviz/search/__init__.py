"""Dreaming: ``api`` (dream, dream_many) runs init -> relax -> harden -> refine -> verify;
the config, result, population, moves, init, budget and verification each live in their
own module."""
