"""torch.library registration of the softgrpo ops and their public wrappers."""
