"""The op table: each op of the scenario format declared once, with every facet the code asks of it
(engine/ops/base.OpSpec), in one module per op or close family; engine.ops.registry maps a step to its
spec.

The op models use the format's field types and the scenario's models use the op models' union, so the
scenario is loaded first whichever package is imported first.
"""

import engine.scenario  # noqa: F401  (loads the field types before the op modules that use them)
