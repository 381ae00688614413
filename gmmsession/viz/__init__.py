"""Notebook views: HTML summaries, plotly figures, widgets (the only layer importing them)."""
