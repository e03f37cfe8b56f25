"""Per-example gradients: losses, Adam preconditioning, projection and collection."""
