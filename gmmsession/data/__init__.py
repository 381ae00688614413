"""Labelled data (xarray schema), the torch bridge, and file I/O."""
