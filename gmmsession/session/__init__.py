"""The Session facade, history, save/open."""
