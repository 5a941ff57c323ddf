"""Where results live and what they are: storage locations, local or a URI (``filesystem``); a
sweep's folder and its atomic writes (``store``); the row schema (``row``); the compressed model
saved beside its row (``compressed``) and exported for deployment (``export``).

May import: the top-level modules (``checks``, ``version``, ``trial``), ``measure``, ``data``, ``models``,
``rankbench.methods``.
"""
