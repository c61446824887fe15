"""Reinforcement tuning of generative recommenders (MiniOneRec's GRPO).

  rewards.py   rewards from item ids (registry: rule, ranking, ...) and
               group advantages
  grpo.py      rollouts from the constrained beam search (the trainer's
               BatchSource) and the GRPO loss
  stage.py     the train_rl stage
"""
