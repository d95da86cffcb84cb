"""Model-independent training building blocks (merge, DPO, schedules, checkpoints, data, plots).

Kept free of heavy imports on purpose: import the submodule you need, e.g.
``from funaudiochat.training.merge import merge_checkpoints``.
"""
