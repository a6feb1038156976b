"""Training: the loop, its checkpoints, models, optimisers, schedules, augmentation, callbacks
and ensembles. Everything here may import torch; nothing here touches the catalogue or
processes (a TrainerCallback is how a run reports)."""
