"""The RL paradigm: GRPO post-training through ``trl.GRPOTrainer`` (``rl=grpo``; docs/rl.md).

``checks`` validates the ``rl`` block before any model loads, ``rewards`` is the reward registry, ``teacher``
the on-policy teacher reward, ``trainer`` the GRPOTrainer with farlab's atomic checkpoints, ``run`` one RL run.
Importing this package loads nothing heavy; ``farlab.rl.run`` imports TRL.
"""
