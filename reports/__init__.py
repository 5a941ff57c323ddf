"""Reports: result rows -> tables (Markdown, LaTeX, CSV), paper diffs and Pareto plots.

``collate`` reads results folders into pandas, ``format`` holds the number formats, cell
escaping and row order every report shares, ``tables`` formats the accuracy/speed-up table,
``paper`` compares it with the published numbers in ``reports/published/*.yaml``, ``plots``
draws the Pareto plot and ``cli`` is ``rankbench report``.

May import: the harness's rooms below the command line (it reads rows, specs, the training
defaults and the data and model names); nothing imports this package but the command line.
"""
