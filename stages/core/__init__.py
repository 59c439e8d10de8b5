"""Shared parts every stage uses: configuration, errors, I/O, device, optimizer, training step, logging, plotting."""
