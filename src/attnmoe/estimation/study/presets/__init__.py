"""The presets of every family, each module registering its own in the one table
(:mod:`attnmoe.estimation.study.registry`): :mod:`.least_squares`, :mod:`.likelihood`,
:mod:`.hmoe`."""
