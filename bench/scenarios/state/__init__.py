"""Scenario 10, the state curves: `curves` (the axes, the proxies, the rows), `build` (each state,
made in the formats the proxy reads at start), `measure` (CPU per request and latency, side by
side), `tables` (the table and the plot for the docs), and remember_404s.py (loaded with -s)."""
