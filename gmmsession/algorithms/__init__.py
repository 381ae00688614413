"""Refinement and reconstruction loops: plain functions, frozen configs, progress callbacks."""
