"""Training one model: the options a trial trains with and each phase's recipe (``config``), the
loop with its resume, epoch and checkpoint phases (``loop``), the moving average of the weights
(``ema``), and the DDP helpers it uses when N processes train one trial (``ddp``).

May import: the top-level modules, ``measure``, ``results``, ``rankbench.methods``. Not the spec
parser, the checks or the runner: they import this room.
"""
