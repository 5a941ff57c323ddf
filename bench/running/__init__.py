"""Running trials: one trial as a plain function (``run``), a trial trained by N processes
(``distributed``), the Ray Tune sweep (``sweep``) and the order its trials start in (``queue``),
and the trackers a trial's epochs are sent to (``tracking``).

May import: every room below it (``spec``, ``preflight``, ``train``, ``results``, ``measure``,
``models``, ``data``, the top-level modules) and ``rankbench.methods``. Only the command line
imports this room.
"""
