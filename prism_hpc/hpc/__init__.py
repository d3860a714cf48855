"""Cluster side: plans, backends, torch.distributed set-up, status. Knows nothing about PRISM."""
