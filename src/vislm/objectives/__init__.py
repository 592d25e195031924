"""Losses. Importing this package registers the objectives in `vislm.registry.OBJECTIVES`."""

from vislm.objectives import itc, itm, mlm  # noqa: F401  (registration)
