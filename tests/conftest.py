"""Shared test set-up: one torch thread (tiny models; avoids oversubscribing 2-core CI machines)."""
import torch

torch.set_num_threads(1)
