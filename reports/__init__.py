"""Reports: result rows -> tables (Markdown, LaTeX, CSV), paper diffs and Pareto plots.

``collate`` reads results folders into pandas, ``tables`` formats them, ``paper`` compares
them with the published numbers in ``reports/published/*.yaml``, ``plots`` draws the Pareto
plot and ``cli`` is ``rankbench report``.
"""
