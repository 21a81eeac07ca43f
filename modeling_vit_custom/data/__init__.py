"""Where the images come from and how they become batches: sources, decoding, transforms, sampling, loaders."""
